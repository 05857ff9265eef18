//! Tags, tag sets and tokens: validation and normalisation.
//!
//! Everything here is pure. A [`TagSet`] is always normalised (sorted bytewise, duplicates
//! folded), so two sets are equal exactly when they hold the same tags, and its comma-joined
//! form is the wire form used in deliveries and `list`.

use std::fmt;

/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 255;
/// Longest token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 255;
/// Most distinct tags in one tag list, unless a server's `max_tags` says otherwise.
pub const DEFAULT_MAX_TAGS: usize = 32;

/// Why a tag list or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("invalid tags: empty tag list")]
    EmptyList,
    #[error("invalid tags: empty tag")]
    EmptyTag,
    #[error("invalid tags: a tag is longer than {MAX_TAG_BYTES} bytes")]
    TagTooLong,
    #[error("invalid tags: a tag is not valid UTF-8")]
    NotUtf8,
    #[error("invalid tags: a tag contains a space, comma or control character")]
    BadByte,
    #[error("invalid tags: more than {0} distinct tags")]
    TooMany(usize),
    #[error("invalid token: empty")]
    EmptyToken,
    #[error("invalid token: longer than {MAX_TOKEN_BYTES} bytes")]
    TokenTooLong,
    #[error("invalid token: not valid UTF-8")]
    TokenNotUtf8,
    #[error("invalid token: contains whitespace or a control character")]
    TokenBadChar,
}

/// True for the bytes a tag may not contain: space, comma and control characters.
#[inline]
fn is_forbidden_tag_byte(b: u8) -> bool {
    b == b' ' || b == b',' || b < 0x20 || b == 0x7f
}

/// Checks one tag and returns it as `&str`.
///
/// # Errors
/// Returns the first rule the tag breaks.
pub fn validate_tag(tag: &[u8]) -> Result<&str, TagError> {
    if tag.is_empty() {
        return Err(TagError::EmptyTag);
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(TagError::TagTooLong);
    }
    if tag.iter().any(|&b| is_forbidden_tag_byte(b)) {
        return Err(TagError::BadByte);
    }
    std::str::from_utf8(tag).map_err(|_| TagError::NotUtf8)
}

/// Checks a token and returns it as `&str`.
///
/// Tokens are stored as text (in memory or in PostgreSQL) and travel in HTTP headers, so besides
/// the protocol's rules (1–255 bytes, no whitespace, no control character) they must be UTF-8.
///
/// # Errors
/// Returns the first rule the token breaks.
pub fn validate_token(token: &[u8]) -> Result<&str, TagError> {
    if token.is_empty() {
        return Err(TagError::EmptyToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TagError::TokenTooLong);
    }
    let s = std::str::from_utf8(token).map_err(|_| TagError::TokenNotUtf8)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TagError::TokenBadChar);
    }
    Ok(s)
}

/// A normalised, non-empty set of valid tags: sorted bytewise, no duplicates.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagSet {
    /// The tags joined by commas; the set's wire form. Sorting sets by this string gives the
    /// order `list` promises.
    joined: Box<str>,
}

impl TagSet {
    /// Parses a comma-separated tag list (`b,a,b`), validating every tag and folding duplicates.
    ///
    /// # Errors
    /// An empty list, an invalid tag, or more than `max_tags` distinct tags.
    pub fn parse(list: &[u8], max_tags: usize) -> Result<TagSet, TagError> {
        // Most lists arrive in their wire form already (every delivery's tags do): then
        // checking is all there is to do.
        if check_list(list, max_tags)? {
            let joined = std::str::from_utf8(list).map_err(|_| TagError::NotUtf8)?;
            return Ok(TagSet {
                joined: joined.into(),
            });
        }
        let mut tags: Vec<&str> = Vec::new();
        for tag in list.split(|&b| b == b',') {
            tags.push(validate_tag(tag)?);
        }
        Self::from_tags(tags, max_tags)
    }

    /// Builds a set from individual tags (as the WebSocket API sends them).
    ///
    /// # Errors
    /// An empty list, an invalid tag, or more than `max_tags` distinct tags.
    pub fn from_strs<S: AsRef<str>>(tags: &[S], max_tags: usize) -> Result<TagSet, TagError> {
        if tags.is_empty() {
            return Err(TagError::EmptyList);
        }
        let mut checked = Vec::with_capacity(tags.len());
        for tag in tags {
            checked.push(validate_tag(tag.as_ref().as_bytes())?);
        }
        Self::from_tags(checked, max_tags)
    }

    fn from_tags(mut tags: Vec<&str>, max_tags: usize) -> Result<TagSet, TagError> {
        tags.sort_unstable();
        tags.dedup();
        if tags.len() > max_tags {
            return Err(TagError::TooMany(max_tags));
        }
        Ok(TagSet {
            joined: tags.join(",").into_boxed_str(),
        })
    }

    /// The tags, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> + Clone {
        self.joined.split(',')
    }

    /// The number of tags.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Always false: a tag set has at least one tag. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The wire form: tags sorted and joined by commas.
    pub fn as_str(&self) -> &str {
        &self.joined
    }

    /// True when every tag of `self` is in `other` (both are sorted, so one merge pass).
    pub fn is_subset_of(&self, other: &TagSet) -> bool {
        let mut theirs = other.iter();
        'mine: for mine in self.iter() {
            for t in theirs.by_ref() {
                match t.cmp(mine) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => continue 'mine,
                    std::cmp::Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }

    /// True when `tag` is one of the set's tags.
    pub fn contains(&self, tag: &str) -> bool {
        self.iter().any(|t| t == tag)
    }
}

/// `"b,a".parse::<TagSet>()`: [`TagSet::parse`] with at most `DEFAULT_MAX_TAGS` (32) tags.
impl std::str::FromStr for TagSet {
    type Err = TagError;

    fn from_str(list: &str) -> Result<TagSet, TagError> {
        TagSet::parse(list.as_bytes(), DEFAULT_MAX_TAGS)
    }
}

impl fmt::Display for TagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined)
    }
}

impl fmt::Debug for TagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagSet({})", self.joined)
    }
}

/// Checks a raw comma-separated list and tells whether it is already normalised, without
/// allocating. Used on the publish path, where most lists arrive sorted and can be forwarded as
/// they are.
///
/// # Errors
/// The same rules as [`TagSet::parse`].
pub fn check_list(list: &[u8], max_tags: usize) -> Result<bool, TagError> {
    if list.is_empty() {
        return Err(TagError::EmptyList);
    }
    let mut prev: Option<&[u8]> = None;
    let mut normalised = true;
    let mut count = 0usize;
    for tag in list.split(|&b| b == b',') {
        validate_tag(tag)?;
        count += 1;
        if prev.is_some_and(|p| p >= tag) {
            normalised = false;
        }
        prev = Some(tag);
    }
    if normalised {
        if count > max_tags {
            return Err(TagError::TooMany(max_tags));
        }
        return Ok(true);
    }
    // Unsorted or with duplicates: the distinct count decides.
    let mut tags: Vec<&[u8]> = list.split(|&b| b == b',').collect();
    tags.sort_unstable();
    tags.dedup();
    if tags.len() > max_tags {
        return Err(TagError::TooMany(max_tags));
    }
    Ok(false)
}

/// Strategies for the property tests of everything that carries tags and tokens.
#[cfg(test)]
pub(crate) mod strategy {
    use proptest::prelude::*;

    /// A valid tag: often one of a few short ones (so lists repeat tags and sets overlap),
    /// otherwise any allowed characters (multi-byte and C1 controls included), sometimes at
    /// the 255-byte limit.
    pub fn tag() -> impl Strategy<Value = String> {
        const SHORT: [&str; 6] = ["a", "b", "c", "é", "a]", "\u{85}"];
        prop_oneof![
            3 => prop::sample::select(&SHORT[..]).prop_map(String::from),
            3 => "[^ ,\\x00-\\x1f\\x7f]{1,63}",
            1 => "[a-z]{250,255}",
        ]
    }

    /// A tag list as a client may send it: up to `max` tags, some repeated, in any order.
    pub fn tag_list(max: usize) -> impl Strategy<Value = Vec<String>> {
        let tags = prop::collection::vec(tag(), 1..=max);
        let repeats = prop::collection::vec(any::<prop::sample::Index>(), 0..4);
        (tags, repeats)
            .prop_map(|(mut tags, repeats)| {
                for r in repeats {
                    tags.push(r.get(&tags).clone());
                }
                tags
            })
            .prop_shuffle()
    }

    /// A valid token: no whitespace or control character, up to 255 bytes.
    pub fn token() -> impl Strategy<Value = String> {
        prop_oneof!["[^\\s\\p{Cc}]{1,63}", "[a-z0-9,]{250,255}"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn set(s: &str) -> TagSet {
        TagSet::parse(s.as_bytes(), 32).unwrap()
    }

    #[test]
    fn parse_sorts_and_folds() {
        assert_eq!(set("b,a,b,c").as_str(), "a,b,c");
        assert_eq!(set("x").as_str(), "x");
        assert_eq!(set("b,a"), set("a,b"));
        assert_eq!(set("a,b,c").len(), 3);
    }

    #[test]
    fn parse_rejects_bad_lists() {
        assert_eq!(TagSet::parse(b"", 32), Err(TagError::EmptyList));
        assert_eq!(TagSet::parse(b"a,,b", 32), Err(TagError::EmptyTag));
        assert_eq!(TagSet::parse(b"a,", 32), Err(TagError::EmptyTag));
        assert_eq!(TagSet::parse(b",", 32), Err(TagError::EmptyTag));
        assert_eq!(TagSet::parse(b"a b", 32), Err(TagError::BadByte));
        assert_eq!(TagSet::parse(b"a\x00", 32), Err(TagError::BadByte));
        assert_eq!(TagSet::parse(b"a\x7f", 32), Err(TagError::BadByte));
        assert_eq!(TagSet::parse(b"a\tb", 32), Err(TagError::BadByte));
        assert_eq!(TagSet::parse(b"\xff", 32), Err(TagError::NotUtf8));
        assert_eq!(TagSet::parse(&[b'a'; 256], 32), Err(TagError::TagTooLong));
        assert!(TagSet::parse(&[b'a'; 255], 32).is_ok());
        assert_eq!(TagSet::parse(b"a,b,c", 2), Err(TagError::TooMany(2)));
    }

    #[test]
    fn duplicates_do_not_count_towards_the_limit() {
        assert_eq!(TagSet::parse(b"a,a,a,b,b", 2).unwrap().as_str(), "a,b");
        assert_eq!(check_list(b"a,a,a,b,b", 2), Ok(false));
    }

    #[test]
    fn utf8_tags_are_fine() {
        assert_eq!(set("é,ü,a").as_str(), "a,é,ü");
    }

    #[test]
    fn subset() {
        assert!(set("a").is_subset_of(&set("a,b,c")));
        assert!(set("b,c").is_subset_of(&set("a,b,c")));
        assert!(set("a,b,c").is_subset_of(&set("a,b,c")));
        assert!(!set("a,d").is_subset_of(&set("a,b,c")));
        assert!(!set("a,b,c").is_subset_of(&set("a,b")));
        assert!(!set("z").is_subset_of(&set("a")));
    }

    #[test]
    fn check_list_reports_normalised_lists() {
        assert_eq!(check_list(b"a,b,c", 32), Ok(true));
        assert_eq!(check_list(b"b,a", 32), Ok(false));
        assert_eq!(check_list(b"a,a", 32), Ok(false));
        assert_eq!(check_list(b"a,,b", 32), Err(TagError::EmptyTag));
        assert_eq!(check_list(b"a,b,c", 2), Err(TagError::TooMany(2)));
        assert_eq!(check_list(b"", 2), Err(TagError::EmptyList));
    }

    #[test]
    fn tokens() {
        assert_eq!(validate_token(b"s3cret-token"), Ok("s3cret-token"));
        assert_eq!(validate_token(b""), Err(TagError::EmptyToken));
        assert_eq!(validate_token(b"a b"), Err(TagError::TokenBadChar));
        assert_eq!(validate_token(b"a\tb"), Err(TagError::TokenBadChar));
        assert_eq!(validate_token(b"a\x01"), Err(TagError::TokenBadChar));
        assert_eq!(
            validate_token("a\u{a0}b".as_bytes()),
            Err(TagError::TokenBadChar)
        );
        assert_eq!(validate_token(b"\xff"), Err(TagError::TokenNotUtf8));
        assert_eq!(validate_token(&[b't'; 256]), Err(TagError::TokenTooLong));
        assert!(validate_token(&[b't'; 255]).is_ok());
        // Commas are fine in tokens: only whitespace separates words.
        assert!(validate_token(b"a,b").is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any valid list, shuffled and with repeats, parses to its sorted, de-duplicated set
        /// (or is refused for having too many distinct tags); the set's wire form parses to
        /// the same set; `check_list` and `from_strs` agree with `parse`.
        #[test]
        fn valid_lists_parse_to_the_sorted_set(
            list in strategy::tag_list(40),
            max_tags in 1..=40usize,
        ) {
            let joined = list.join(",");
            let want: BTreeSet<&str> = list.iter().map(String::as_str).collect();
            let parsed = TagSet::parse(joined.as_bytes(), max_tags);
            prop_assert_eq!(&TagSet::from_strs(&list, max_tags), &parsed);
            if want.len() > max_tags {
                prop_assert_eq!(parsed, Err(TagError::TooMany(max_tags)));
                prop_assert_eq!(check_list(joined.as_bytes(), max_tags), Err(TagError::TooMany(max_tags)));
                return Ok(());
            }
            let set = parsed.unwrap();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), want.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.len(), want.len());
            prop_assert_eq!(&TagSet::parse(set.as_str().as_bytes(), max_tags).unwrap(), &set);
            prop_assert_eq!(check_list(set.as_str().as_bytes(), max_tags), Ok(true));
            prop_assert_eq!(
                check_list(joined.as_bytes(), max_tags),
                Ok(joined == set.as_str())
            );
            for tag in &list {
                prop_assert!(set.contains(tag));
            }
        }

        /// On near-valid bytes (separators, forbidden and non-UTF-8 bytes mixed in),
        /// `check_list` accepts exactly what `TagSet::parse` accepts, with the same error
        /// otherwise, and calls a list normalised exactly when it is the set's wire form.
        #[test]
        fn check_list_agrees_with_parse(
            bytes in prop::collection::vec(
                prop::sample::select(&b"abc,,, \x00\x1f\x7f\xc3\xa9\xff"[..]),
                0..24,
            ),
            max_tags in 1..=4usize,
        ) {
            match (check_list(&bytes, max_tags), TagSet::parse(&bytes, max_tags)) {
                (Ok(normalised), Ok(set)) => {
                    prop_assert_eq!(normalised, bytes == set.as_str().as_bytes());
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "check_list {:?}, parse {:?}", a, b),
            }
        }

        /// `is_subset_of` and `contains` are the set operations.
        #[test]
        fn subset_is_set_inclusion(a in strategy::tag_list(4), b in strategy::tag_list(6)) {
            let (sa, sb) = (TagSet::from_strs(&a, 32).unwrap(), TagSet::from_strs(&b, 32).unwrap());
            let (ma, mb): (BTreeSet<&String>, BTreeSet<&String>) = (a.iter().collect(), b.iter().collect());
            prop_assert_eq!(sa.is_subset_of(&sb), ma.is_subset(&mb));
            prop_assert_eq!(sb.is_subset_of(&sa), mb.is_subset(&ma));
            prop_assert!(sa.is_subset_of(&sa));
            for t in &b {
                prop_assert_eq!(sa.contains(t), ma.contains(t));
            }
        }

        /// The token strategy makes only valid tokens, and they come back unchanged.
        #[test]
        fn valid_tokens_pass(token in strategy::token()) {
            prop_assert_eq!(validate_token(token.as_bytes()), Ok(token.as_str()));
        }
    }
}

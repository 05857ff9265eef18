#!/usr/bin/env bash
# The Debian package, checked from a scratch root: the files it installs, the conffile, the
# unit (systemd-analyze verify), and the packaged binary running on the packaged config and
# stopping cleanly on SIGTERM. Packages the debug binary: the release build would cost CI
# several minutes and tests nothing more here. Run by scripts/test.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'tests/package.sh: FAILED: %s\n' "$*" >&2; exit 1; }
ok() { printf 'tests/package.sh: ok: %s\n' "$*" >&2; }

scripts/package --debug >/dev/null
deb=$(ls -t target/debian/debug/mist_*.deb | head -n 1)
[ -f "$deb" ] || fail "no package in target/debian/debug"

scratch=$(mktemp -d /tmp/mist-package.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT
root=$scratch/root
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$scratch/control"

for f in usr/bin/mist etc/mist/mist.conf usr/lib/systemd/system/mist.service \
         usr/lib/sysctl.d/90-mist.conf usr/share/doc/mist/README.md; do
  [ -f "$root/$f" ] || fail "the package lacks /$f"
done
ok "files in place"

grep -qx /etc/mist/mist.conf "$scratch/control/conffiles" || fail "/etc/mist/mist.conf is not a conffile"
cmp -s "$root/etc/mist/mist.conf" packaging/mist.conf || fail "/etc/mist/mist.conf differs from packaging/mist.conf"
grep -qx 'vm.max_map_count = 262144' "$root/usr/lib/sysctl.d/90-mist.conf" || fail "sysctl drop-in"
grep -q 'systemd-sysctl /usr/lib/sysctl.d/90-mist.conf' "$scratch/control/postinst" || fail "postinst does not apply the sysctl drop-in"
grep -q 'deb-systemd-helper' "$scratch/control/postinst" || fail "postinst does not register the unit"
ok "conffile, sysctl drop-in, maintainer scripts"

version=$("$root/usr/bin/mist" -v)
want="mist $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[ "$version" = "$want" ] || fail "mist -v printed '$version', not '$want'"
ok "mist -v from the scratch root: $version"

# systemd-analyze verify --root looks up everything inside the root, the standard targets too.
mkdir -p "$root/usr/lib/systemd/system"
cp -an /lib/systemd/system/. "$root/usr/lib/systemd/system/" 2>/dev/null || true
verify=$(systemd-analyze verify --root="$root" mist.service 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify complained: $verify"
ok "systemd-analyze verify mist.service"

# The packaged binary on the packaged config, listeners moved to free ports; SIGTERM stops it
# cleanly (exit 0, "stopped" logged), as the unit's KillSignal expects.
"$root/usr/bin/mist" -d --config "$root/etc/mist/mist.conf" --tcp-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --monitor-addr 127.0.0.1:0 2>"$scratch/log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening for HTTP and WebSocket clients' "$scratch/log" && break
  kill -0 "$pid" 2>/dev/null || fail "mist exited at start: $(cat "$scratch/log")"
  sleep 0.1
done
grep -q 'listening for HTTP and WebSocket clients' "$scratch/log" || fail "mist did not start: $(cat "$scratch/log")"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || fail "mist exited with $rc on SIGTERM: $(cat "$scratch/log")"
grep -q 'stopped' "$scratch/log" || fail "no clean stop in the log: $(cat "$scratch/log")"
ok "runs on the packaged config and stops cleanly on SIGTERM"
echo "package: 5 passed, 0 failed"

#!/usr/bin/env bash
# Checks the packages scripts/package.sh built, as an operator would meet them:
#   - checksums, file lists and config-file marks of the .deb (dpkg-deb) and the .rpm (rpm -qp),
#     and the glibc versions the .rpm requires (Amazon Linux 2023 has 2.34);
#   - rpm -i into a scratch root: owners and modes of /etc/lb as the service needs them;
#   - dpkg -i of the .deb on this machine: lb --version, the lb user, a generated route key
#     (root:lb, 0640), lb check on the installed /etc/lb/lb.toml (as root and as the lb user the
#     unit runs as), systemd-analyze verify on the installed unit;
#   - a second dpkg -i keeps an edited lb.toml and the route key;
#   - dpkg --purge leaves nothing behind (and the lb user goes when this script created it).
# Needs root (dpkg -i). Refuses to run where an lb package is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
GLIBC_MAX=2.34
VERSION=$(awk '/^\[workspace.package\]/ { s = 1; next } /^\[/ { s = 0 }
  s && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
RELEASE=${LB_PACKAGE_RELEASE:-1}
DEB=target/packages/lb_${VERSION}-${RELEASE}_$(dpkg --print-architecture).deb
RPM=target/packages/lb-${VERSION}-${RELEASE}.$(uname -m).rpm
fail() { echo "check-package: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
[ -f "$DEB" ] && [ -f "$RPM" ] || fail "no $DEB or $RPM: run scripts/package.sh"
TMP=$(mktemp -d)
INSTALLED=no
USER_EXISTED=no
getent passwd lb >/dev/null && USER_EXISTED=yes
cleanup() {
  if [ "$INSTALLED" = yes ]; then
    dpkg --purge lb >/dev/null 2>&1 || true
    if [ "$USER_EXISTED" = no ]; then
      userdel lb 2>/dev/null || true
      groupdel lb 2>/dev/null || true
    fi
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "== checksums"
(cd target/packages && sha256sum -c "$(basename "$DEB").sha256" "$(basename "$RPM").sha256")

# Every package holds these (directories end in /).
EXPECTED=(
  /usr/bin/lb
  /usr/lib/systemd/system/lb.service
  /usr/lib/sysusers.d/lb.conf
  /usr/lib/tmpfiles.d/lb.conf
  /etc/lb/ /etc/lb/tls/ /etc/lb/qlik/
  /etc/lb/lb.toml
  /usr/share/doc/lb/README.md /usr/share/doc/lb/DEPLOY.md /usr/share/doc/lb/QLIK-SETUP.md
  /usr/share/doc/lb/copyright
  /usr/share/doc/lb/examples/local.toml /usr/share/doc/lb/examples/production.toml
)

echo "== dpkg-deb -c $DEB"
dpkg-deb -c "$DEB" | tee "$TMP/deb-contents.txt"
DEB_FILES=$(awk '{ print substr($6, 2) }' "$TMP/deb-contents.txt")
for f in "${EXPECTED[@]}"; do
  grep -qxF "$f" <<<"$DEB_FILES" || fail ".deb lacks $f"
done
grep -E ' \./etc/lb/lb\.toml$' "$TMP/deb-contents.txt" | grep -q '^-rw-r----- root/root' ||
  fail ".deb: /etc/lb/lb.toml is not 0640"
[ "$(dpkg-deb -I "$DEB" conffiles)" = /etc/lb/lb.toml ] || fail ".deb: lb.toml is not a conffile"
dpkg-deb -f "$DEB" Package Version Architecture Depends

echo "== rpm -qlp $RPM"
RPM_FILES=$(rpm -qlp "$RPM")
echo "$RPM_FILES"
for f in "${EXPECTED[@]}"; do
  grep -qxF "${f%/}" <<<"$RPM_FILES" || fail ".rpm lacks ${f%/}"
done
# %config(noreplace) shows as flags "cn"; owner and mode as the running service needs them.
FLAGS=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$RPM")
grep -qxF 'cn -rw-r----- root:lb /etc/lb/lb.toml' <<<"$FLAGS" ||
  fail ".rpm: /etc/lb/lb.toml is not %config(noreplace) root:lb 0640: $(grep lb.toml <<<"$FLAGS")"
grep -qxF ' drwxr-x--- root:lb /etc/lb' <<<"$FLAGS" || fail ".rpm: /etc/lb is not root:lb 0750"
rpm -qp --scripts "$RPM" | grep -q 'systemd-sysusers' || fail ".rpm creates no lb user"
# Its scriptlets are valid sh (they only run on the target system).
for tag in PREIN POSTIN PREUN POSTUN; do
  rpm -qp --qf "%{$tag}\n" "$RPM" > "$TMP/scriptlet.sh"
  sh -n "$TMP/scriptlet.sh" || fail ".rpm $tag scriptlet is not valid sh"
done
RPM_GLIBC=$(rpm -qpR "$RPM" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
echo "rpm requires glibc symbols up to $RPM_GLIBC"
[ "$(printf '%s\n%s\n' "$RPM_GLIBC" "$GLIBC_MAX" | sort -V | tail -1)" = "$GLIBC_MAX" ] ||
  fail ".rpm requires glibc $RPM_GLIBC, above $GLIBC_MAX"

echo "== rpm -i into a scratch root (the lb user as %pre makes it; no other scriptlets, no deps)"
R=$TMP/rpm-root
mkdir -p "$R/etc"
printf 'root:x:0:0:root:/root:/bin/sh\nlb:x:990:990:lb:/:/usr/sbin/nologin\n' > "$R/etc/passwd"
printf 'root:x:0:\nlb:x:990:\n' > "$R/etc/group"
rpm --root "$R" --initdb
rpm --root "$R" -i --nodeps --noscripts "$RPM" 2>&1 | grep -v -e 'should not be used directly' -e 'assuming you know' || true
rpm --root "$R" -q lb >/dev/null || fail ".rpm did not install into a scratch root"
rpm --root "$R" -V --nodeps --noscripts lb || fail "rpm -V: installed files differ from the package"
for f in etc/lb:750 etc/lb/lb.toml:640 etc/lb/tls:750 etc/lb/qlik:750; do
  [ "$(stat -c '%a %u:%g' "$R/${f%%:*}")" = "${f##*:} 0:990" ] ||
    fail ".rpm: /${f%%:*} is $(stat -c '%a %u:%g' "$R/${f%%:*}"), not ${f##*:} root:lb"
done
"$R/usr/bin/lb" --version >/dev/null || fail ".rpm: /usr/bin/lb does not run"
echo ok

echo "== dpkg -i $DEB"
if dpkg-query -W -f='${Status}' lb 2>/dev/null | grep -q 'installed'; then
  fail "an lb package is installed on this machine; this check installs and purges one"
fi
INSTALLED=yes
dpkg -i "$DEB"

echo "== lb --version"
lb --version
COMMIT=unknown
if git rev-parse --short HEAD >/dev/null 2>&1; then COMMIT=$(git rev-parse --short HEAD); fi
[ "$(lb --version)" = "lb $VERSION (commit $COMMIT)" ] || fail "lb --version is not \"lb $VERSION (commit $COMMIT)\""
[ "$(command -v lb)" = /usr/bin/lb ] || fail "lb is not /usr/bin/lb"

getent passwd lb | grep -q ':/usr/sbin/nologin$' || fail "no lb system user without a shell"
[ "$(stat -c '%a %U:%G' /etc/lb/route.key)" = "640 root:lb" ] || fail "route key: $(stat -c '%a %U:%G' /etc/lb/route.key)"
[ "$(stat -c '%a %U:%G' /etc/lb/lb.toml)" = "640 root:lb" ] || fail "lb.toml: $(stat -c '%a %U:%G' /etc/lb/lb.toml)"
[ "$(stat -c '%a %U:%G' /etc/lb)" = "750 root:lb" ] || fail "/etc/lb: $(stat -c '%a %U:%G' /etc/lb)"
[ "$(wc -c < /etc/lb/route.key)" -ge 32 ] || fail "route key shorter than 32 bytes"

echo "== lb check --config /etc/lb/lb.toml"
lb check --config /etc/lb/lb.toml
echo "== the same as user lb (the unit's User=)"
runuser -u lb -- /usr/bin/lb check --config /etc/lb/lb.toml >/dev/null || fail "user lb cannot check /etc/lb/lb.toml"

echo "== systemd-analyze verify /usr/lib/systemd/system/lb.service"
VERIFY=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify /usr/lib/systemd/system/lb.service 2>&1) ||
  fail "systemd-analyze verify: $VERIFY"
if grep -q 'lb\.service' <<<"$VERIFY"; then fail "systemd-analyze verify: $VERIFY"; fi
echo "ok"

echo "== reinstall keeps an edited lb.toml and the route key"
KEY=$(cat /etc/lb/route.key)
echo '# edited by the operator' >> /etc/lb/lb.toml
dpkg -i --force-confold "$DEB" >/dev/null
grep -qx '# edited by the operator' /etc/lb/lb.toml || fail "reinstall replaced the edited lb.toml"
[ "$(cat /etc/lb/route.key)" = "$KEY" ] || fail "reinstall changed the route key"
lb check --config /etc/lb/lb.toml >/dev/null

echo "== dpkg --purge lb"
dpkg --purge lb
for p in /usr/bin/lb /usr/lib/systemd/system/lb.service /etc/lb; do
  [ ! -e "$p" ] || fail "$p is left after purge"
done
echo "check-package: ok"

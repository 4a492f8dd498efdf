#!/usr/bin/env bash
# Builds the lb packages from a release build:
#   target/packages/lb_<version>-<release>_<arch>.deb      (Debian 12, with dpkg-deb)
#   target/packages/lb-<version>-<release>.<arch>.rpm      (Amazon Linux 2023, with rpmbuild)
# and a .sha256 file beside each. Both hold the same files:
#   /usr/bin/lb                        the binary
#   /usr/lib/systemd/system/lb.service deploy/systemd/lb.service
#   /usr/lib/sysusers.d/lb.conf        deploy/systemd/lb.sysusers.conf (the lb user)
#   /usr/lib/tmpfiles.d/lb.conf        deploy/systemd/lb.tmpfiles.conf (owners, modes of /etc/lb)
#   /etc/lb/lb.toml                    deploy/packaging/lb.toml, a configuration file
#                                      (dpkg conffile, rpm %config(noreplace))
#   /etc/lb/tls/, /etc/lb/qlik/        for certificates
#   /usr/share/doc/lb/                 README.md, DEPLOY.md, QLIK-SETUP.md, copyright, examples/
# Installing creates the lb user and, when missing, a random /etc/lb/route.key (root:lb, 0640).
#
# Needs: cargo, dpkg-deb (dpkg), rpmbuild (Debian package rpm), objdump (binutils).
# The binary must run on Amazon Linux 2023 (glibc 2.34): the script fails when it needs a newer
# glibc symbol version. Environment: LB_PACKAGE_RELEASE (default 1), LB_PACKAGE_MAINTAINER.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GLIBC_MAX=2.34
RELEASE=${LB_PACKAGE_RELEASE:-1}
MAINTAINER=${LB_PACKAGE_MAINTAINER:-lb maintainers <root@localhost>}
OUT=$ROOT/target/packages

for tool in cargo dpkg-deb rpmbuild objdump sha256sum; do
  command -v "$tool" >/dev/null || {
    echo "package.sh: $tool not found (apt-get install -y dpkg rpm binutils)" >&2
    exit 1
  }
done

VERSION=$(awk '/^\[workspace.package\]/ { s = 1; next } /^\[/ { s = 0 }
  s && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
[ -n "$VERSION" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }

echo "== cargo build --release (lb $VERSION)"
cargo build --release --locked -p lb --bin lb
BIN=$ROOT/target/release/lb

# Highest glibc symbol version the binary needs.
NEEDS=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
if [ "$(printf '%s\n%s\n' "$NEEDS" "$GLIBC_MAX" | sort -V | tail -1)" != "$GLIBC_MAX" ]; then
  echo "package.sh: target/release/lb needs glibc $NEEDS; Amazon Linux 2023 has $GLIBC_MAX." >&2
  objdump -T "$BIN" | grep -E "GLIBC_$NEEDS\b" >&2 || true
  exit 1
fi
echo "== binary needs glibc >= $NEEDS (limit $GLIBC_MAX); $("$BIN" --version)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
install -D -m 0755 "$BIN" "$STAGE/usr/bin/lb"
install -D -m 0644 deploy/systemd/lb.service "$STAGE/usr/lib/systemd/system/lb.service"
install -D -m 0644 deploy/systemd/lb.sysusers.conf "$STAGE/usr/lib/sysusers.d/lb.conf"
install -D -m 0644 deploy/systemd/lb.tmpfiles.conf "$STAGE/usr/lib/tmpfiles.d/lb.conf"
install -d -m 0750 "$STAGE/etc/lb" "$STAGE/etc/lb/tls" "$STAGE/etc/lb/qlik"
install -m 0640 deploy/packaging/lb.toml "$STAGE/etc/lb/lb.toml"
DOC=$STAGE/usr/share/doc/lb
install -D -m 0644 README.md "$DOC/README.md"
install -m 0644 deploy/README.md "$DOC/DEPLOY.md"
install -m 0644 deploy/QLIK-SETUP.md "$DOC/QLIK-SETUP.md"
install -m 0644 deploy/packaging/copyright "$DOC/copyright"
install -d -m 0755 "$DOC/examples"
install -m 0644 deploy/examples/*.toml "$DOC/examples/"
# Reproducible trees: no stray write bits from the checkout's umask.
find "$STAGE" -type d -exec chmod go-w {} +

mkdir -p "$OUT"
DEB_ARCH=$(dpkg --print-architecture)
RPM_ARCH=$(uname -m)

echo "== .deb"
mkdir -p "$WORK/deb"
cp -a "$STAGE/." "$WORK/deb/"
mkdir -m 0755 "$WORK/deb/DEBIAN"
cat > "$WORK/deb/DEBIAN/control" <<CONTROL
Package: lb
Version: $VERSION-$RELEASE
Architecture: $DEB_ARCH
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$WORK/deb" | cut -f1)
Depends: libc6 (>= $NEEDS), libgcc-s1, systemd
Section: net
Priority: optional
Description: sticky, WebSocket-aware load balancer for Qlik Sense proxy nodes
 lb sits in front of several Qlik Sense Proxy Service (QPS) nodes and keeps each
 session, its HTTP requests and its app WebSocket, on the node that issued it. It
 also answers the Qlik virtual proxy's load balancing module calls, ranking
 engines by live RAM and CPU.
CONTROL
echo /etc/lb/lb.toml > "$WORK/deb/DEBIAN/conffiles"
install -m 0755 deploy/packaging/postinst deploy/packaging/prerm deploy/packaging/postrm "$WORK/deb/DEBIAN/"
(cd "$WORK/deb" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
  sort -z | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$WORK/deb/DEBIAN/control" "$WORK/deb/DEBIAN/conffiles" "$WORK/deb/DEBIAN/md5sums"
DEB=$OUT/lb_${VERSION}-${RELEASE}_${DEB_ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$WORK/deb" "$DEB" >/dev/null

echo "== .rpm"
sed -e "s|@VERSION@|$VERSION|" -e "s|@RELEASE@|$RELEASE|" -e "s|@ARCH@|$RPM_ARCH|" -e "s|@STAGE@|$STAGE|" \
  deploy/packaging/lb.spec.in > "$WORK/lb.spec"
# The sysusers entry itself goes into %pre: the user must exist before files get group lb.
ENTRIES=$(grep -v -e '^#' -e '^$' deploy/systemd/lb.sysusers.conf)
awk -v e="$ENTRIES" '{ if ($0 == "@SYSUSERS@") print e; else print }' "$WORK/lb.spec" > "$WORK/lb.spec.new"
mv "$WORK/lb.spec.new" "$WORK/lb.spec"
rpmbuild -bb --quiet --target "$RPM_ARCH" \
  --define "_topdir $WORK/rpmbuild" \
  --define "_rpmdir $WORK/rpms" \
  --define "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm" \
  --define "__strip /bin/true" \
  --define "debug_package %{nil}" \
  --define "_build_id_links none" \
  "$WORK/lb.spec"
RPM=$OUT/lb-${VERSION}-${RELEASE}.${RPM_ARCH}.rpm
mv "$WORK/rpms/lb-${VERSION}-${RELEASE}.${RPM_ARCH}.rpm" "$RPM"

cd "$OUT"
for f in "$(basename "$DEB")" "$(basename "$RPM")"; do
  sha256sum "$f" > "$f.sha256"
done
echo "== packages"
ls -l "$DEB" "$DEB.sha256" "$RPM" "$RPM.sha256"

"""Print the certificate authorities an image build should trust beyond Debian's own.

``python3 scripts/host_ca_certs.py [FILE|none]``: with a FILE, its PEM certificates; with
``none``, nothing; with no argument, those this host trusts (its system bundle) that are not
in Debian's Mozilla set, e.g. a TLS-inspecting proxy's CA that a site added. Used by
scripts/images-offline.sh for the Debian base image. Standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MOZILLA = Path("/usr/share/ca-certificates/mozilla")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def certificates(text: str) -> list[str]:
    """The PEM blocks in ``text``, whitespace inside each normalised (for comparing)."""
    return ["\n".join(line.strip() for line in m.group(0).splitlines()) for m in PEM.finditer(text)]


def extra_certificates(bundle: str, known: list[str]) -> list[str]:
    """Certificates of ``bundle`` not in ``known``, in bundle order, each once."""
    seen = set(known)
    out = []
    for cert in certificates(bundle):
        if cert not in seen:
            seen.add(cert)
            out.append(cert)
    return out


def main(argv: list[str]) -> int:
    choice = argv[0] if argv else ""
    if choice == "none":
        return 0
    if choice:
        path = Path(choice)
        if not path.is_file():
            print(
                f"EXTRA_CA_CERTS={choice}: no such file (give a PEM file or 'none')",
                file=sys.stderr,
            )
            return 2
        found = certificates(path.read_text())
        if not found:
            print(f"EXTRA_CA_CERTS={choice}: no PEM certificate in it", file=sys.stderr)
            return 2
    elif HOST_BUNDLE.is_file():
        known = [c for p in sorted(MOZILLA.glob("*.crt")) for c in certificates(p.read_text())]
        found = extra_certificates(HOST_BUNDLE.read_text(), known)
    else:
        found = []
    sys.stdout.write("".join(c + "\n" for c in found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

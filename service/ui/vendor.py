"""Re-vendor the API docs' browser bundles (Swagger UI, ReDoc) into ``service/ui/vendor/``.

    python -m service.ui.vendor                      # the pinned versions below
    python -m service.ui.vendor --swagger 5.35.0 --redoc 2.5.4

Needs ``npm`` (only ``npm pack``: a package's tarball from the npm registry, nothing installed, no
build). Only the minified bundles are kept, gzipped (the server sends them as they are stored, with
``Content-Encoding: gzip``), with their licence files; ``manifest.json`` says what came from where.
Commit the result: the server never fetches anything at run time (docs/ui.md).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).parent / "vendor"
SWAGGER = "5.35.0"  # swagger-ui-dist: what FastAPI's /docs loads from a CDN by default (@5)
REDOC = "2.5.4"  # redoc: FastAPI's default is @2

# package -> (bundles served under /ui/vendor/, licence files kept beside them)
FILES = {
    "swagger-ui-dist": (
        ["swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"],
        ["LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"],
    ),
    "redoc": (["bundles/redoc.standalone.js"], ["LICENSE", "bundles/redoc.standalone.js.LICENSE.txt"]),
}
# what the bundles would fetch from the internet by themselves, replaced at vendoring time: ReDoc's
# side menu shows a logo from its CDN (an empty inline image instead; the link beside it stays)
EMPTY_SVG = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
PATCHES = {"redoc.standalone.js": [("https://cdn.redoc.ly/redoc/logo-mini.svg", EMPTY_SVG)]}


def npm_pack(spec: str, workdir: Path) -> tarfile.TarFile:
    out = subprocess.run(
        ["npm", "pack", "--silent", spec], cwd=workdir, check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    return tarfile.open(workdir / out)


def patch(name: str, data: bytes) -> bytes:
    for old, new in PATCHES.get(name, []):
        n = data.count(old.encode())
        if n != 1:  # another version of the bundle: look at what it loads before changing the patch
            raise SystemExit(f"{name}: expected {old!r} once, found it {n} times")
        data = data.replace(old.encode(), new.encode())
    return data


def vendor(versions: dict[str, str], dest: Path = VENDOR) -> dict[str, object]:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.gz"):
        old.unlink()
    assets: dict[str, str] = {}
    licences: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for package, (bundles, licence_files) in FILES.items():
            spec = f"{package}@{versions[package]}"
            with npm_pack(spec, Path(tmp)) as tar:
                for member in bundles + licence_files:
                    f = tar.extractfile(f"package/{member}")
                    assert f is not None, member
                    data = f.read()
                    name = Path(member).name
                    if member in bundles:
                        data = patch(name, data)
                        buf = io.BytesIO()
                        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
                            gz.write(data)  # mtime=0: the same input gives the same bytes
                        (dest / f"{name}.gz").write_bytes(buf.getvalue())
                        assets[name] = spec
                    else:
                        out = dest / "licences" / package / name
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.write_bytes(data)
                        licences[str(out.relative_to(dest))] = spec
    manifest = {
        "assets": assets,
        "licences": licences,
        "patched": {name: [old for old, _ in p] for name, p in PATCHES.items()},
        "how": "python -m service.ui.vendor (docs/ui.md)",
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swagger", default=SWAGGER, help="swagger-ui-dist version")
    ap.add_argument("--redoc", default=REDOC, help="redoc version")
    args = ap.parse_args()
    manifest = vendor({"swagger-ui-dist": args.swagger, "redoc": args.redoc})
    for name in manifest["assets"]:  # type: ignore[union-attr]
        print(f"{VENDOR / (name + '.gz')}: {(VENDOR / (name + '.gz')).stat().st_size} bytes")


if __name__ == "__main__":
    main()

"""``dvc plots show`` that renders without a network: the Vega scripts are fetched once from the
npm registry (pinned versions, checked against the registry's sha512 integrity), kept under
``.mixpipe/vega/``, and copied beside the page, which loads them from there instead of a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from pipelines.errors import MixpipeError

REGISTRY = "https://registry.npmjs.org"
# name, version, the registry's integrity of its tarball, the script inside it
SCRIPTS = (
    ("vega", "5.33.1", "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
     "package/build/vega.min.js"),
    ("vega-lite", "5.23.0", "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
     "package/build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
     "package/build/vega-embed.min.js"),
)
CACHE = Path(".mixpipe/vega")
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mixpipe: DVC plots</title>
<script src="vega.min.js"></script><script src="vega-lite.min.js"></script><script src="vega-embed.min.js"></script>
<style>body{font-family:sans-serif;margin:1.5em} .vega-embed{margin:1em 1.5em 2em 0;vertical-align:top}
div[id]{display:inline-block} img{max-width:100%;height:auto}</style>
</head><body><h1>mixpipe: DVC plots</h1>
{plot_divs}
</body></html>
"""


def _check_integrity(data: bytes, integrity: str, what: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise MixpipeError(f"plots: {what} from the npm registry does not match its pinned {algorithm} integrity")


def vega_scripts(cache: Path = CACHE, registry: str = REGISTRY) -> list[Path]:
    """The three scripts, fetched into ``cache`` on first use."""
    paths = []
    for name, version, integrity, member in SCRIPTS:
        path = cache / f"{name}-{version}.min.js"
        if not path.exists():
            url = f"{registry}/{name}/-/{name}-{version}.tgz"
            try:
                with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a fixed https registry URL
                    data = response.read()
            except OSError as error:
                raise MixpipeError(f"plots: cannot fetch {url} ({error}); run once where the npm registry is "
                                   f"reachable, or copy {cache}/ from such a machine") from None
            _check_integrity(data, integrity, f"{name}@{version}")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                script = archive.extractfile(member)
                if script is None:
                    raise MixpipeError(f"plots: {name}@{version} holds no {member}")
                cache.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                partial.write_bytes(script.read())
                partial.replace(path)
        paths.append(path)
    return paths


def show(out_dir: str = "dvc_plots", targets: list[str] | None = None) -> Path:
    """Run ``dvc plots show`` into ``out_dir`` with a page that loads Vega from beside itself."""
    scripts = vega_scripts()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mixpipe-plots-") as scratch:
        template = Path(scratch) / "page.html"
        template.write_text(PAGE)
        command = [sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template), "-o", str(out),
                   *(targets or [])]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MixpipeError(f"plots: dvc plots show failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    for script, (name, _, _, _) in zip(scripts, SCRIPTS, strict=True):
        shutil.copyfile(script, out / f"{name}.min.js")
    return out / "index.html"

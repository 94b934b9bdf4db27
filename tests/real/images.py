"""Images for the real cluster: there is no registry, so every image a test uses is imported.

- The plugin's default agent image (``python:3.13-alpine``) is the cluster's python3 tools
  image under that name, so a trace without ``--image`` runs exactly as for a user (the
  inline agent, in an image that is not the project's).
- The project's debug image (agent preinstalled, ``python3 -m kubectl_dnstrace.agent``) is
  built here without an image builder: the tools image's layer plus one layer holding this
  checkout's agent package, written as a docker archive and imported. Its tag carries a hash
  of the package, so a changed agent is a new image.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile
import time
from pathlib import Path

from kubectl_dnstrace.agent_program import (
    AGENT_MODULES,
    DEFAULT_IMAGE,
    PROJECT_IMAGE,
    PROJECT_IMAGE_LABEL,
)
from tests.real.cluster import REPO, TOOLS_IMAGE, RealCluster

SITE = "usr/lib/python3/dist-packages"  # Debian python3's path in the tools image


def _agent_files() -> dict[str, bytes]:
    """What the debug image installs: the agent's modules and its ``__main__``."""
    rels = [m.replace(".", "/") + ("/__init__.py" if pkg else ".py") for m, pkg in AGENT_MODULES]
    rels.append("kubectl_dnstrace/agent/__main__.py")
    return {f"{SITE}/{rel}": (REPO / rel).read_bytes() for rel in rels}


def project_image_tag() -> str:
    digest = hashlib.sha256()
    for name, data in sorted(_agent_files().items()):
        digest.update(name.encode() + b"\0" + data)
    return f"{PROJECT_IMAGE}:test-{digest.hexdigest()[:12]}"


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:
            parts = Path(d).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub in tar.getnames():
                    continue
                info = tarfile.TarInfo(sub)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_project_image(tools_archive: Path, out: Path, tag: str) -> Path:
    """A two-layer docker archive: the tools image's layer, then the agent package."""
    with lzma.open(tools_archive) as raw, tarfile.open(fileobj=raw, mode="r|") as src, \
            tarfile.open(out, "w") as dst:
        base_config = None
        layers: list[str] = []
        for member in src:
            if member.name.endswith("/layer.tar"):
                dst.addfile(member, src.extractfile(member))
                layers.append(member.name)
            elif member.name == "manifest.json":
                continue
            elif member.name.endswith(".json"):
                base_config = json.loads(src.extractfile(member).read())
        assert base_config is not None and len(layers) == 1, "unexpected tools image archive"
        layer = _tar_bytes(_agent_files())
        layer_id = hashlib.sha256(layer).hexdigest()
        config = dict(base_config)
        config["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        config["config"] = dict(base_config["config"],
                                Entrypoint=["python3", "-m", "kubectl_dnstrace.agent"], Cmd=None,
                                Labels={PROJECT_IMAGE_LABEL: "1"})
        config["rootfs"] = {"type": "layers",
                            "diff_ids": [*base_config["rootfs"]["diff_ids"], "sha256:" + layer_id]}
        config["history"] = [*base_config.get("history", []), {"created_by": "tests/real/images.py"}]
        cfg = json.dumps(config).encode()
        cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
        manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag],
                                "Layers": [layers[0], f"{layer_id}/layer.tar"]}]).encode()
        for name, data in ((f"{layer_id}/layer.tar", layer), (cfg_name, cfg),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            dst.addfile(info, io.BytesIO(data))
    return out


def prepare_images(cluster: RealCluster, workdir: Path) -> str:
    """Tag the default agent image and import the project image; returns the latter's name."""
    cluster.realk8s("image-tag", TOOLS_IMAGE, DEFAULT_IMAGE)
    tag = project_image_tag()
    present = cluster.realk8s("ctr", "images", "ls", "-q").stdout.split()
    if tag not in present:
        tools = cluster.script.parent / "images" / "tools.tar.xz"
        archive = build_project_image(tools, workdir / "project-image.tar", tag)
        cluster.realk8s("image-import", str(archive), tag, timeout=600)
        archive.unlink()
    return tag

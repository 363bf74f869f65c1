"""What a stored artefact holds, as one digest: for comparing work directories made by different runs or world sizes.

A .npy file is its bytes. A .safetensors file is its tensors (name, dtype, shape, bytes) and its metadata, not its
bytes: safetensors writes the metadata keys in a hash order that differs between processes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def artefact_digest(path: str | Path) -> str:
    path = Path(path)
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as handle:
        digest.update(json.dumps(handle.metadata(), sort_keys=True).encode())
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def work_dir_digests(work: str | Path) -> dict[str, str]:
    """artefact_digest of every array and tensor file under `work` except the reports (drawn from them)."""
    work = Path(work)
    files = [p for p in work.rglob("*") if p.suffix in (".npy", ".safetensors") and "attributions" not in p.parts]
    return {str(p.relative_to(work)): artefact_digest(p) for p in sorted(files)}

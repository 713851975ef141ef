"""Parity of a compiled artifact with PyTorch on real preprocessed photos (per output cosine, max abs error)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from .artifact import CompiledArtifact, check_files, read_manifest, structure_outputs, this_arch
from .errors import VerificationError
from .targets import gpu_present, missing_cpu_flags

COSINE_MIN_FP32 = 0.9999
COSINE_MIN_BF16 = 0.999  # bf16 conv inputs and weights (compile.schedules.bf16): 8 mantissa bits per value
AGREEMENT_MIN_BF16 = 0.99  # top-1 agreement of the checkpoint's classifier with fp32 PyTorch (compile.quantize)
DEFAULT_PHOTOS = 3

Status = Literal["passed", "failed", "built, not verified here"]


@dataclass
class VerificationReport:
    """What a parity run found. `ok` is False only when it ran and failed (or could not run)."""

    status: Status
    method: str  # "host", "gpu", "qemu-aarch64", or "" when not run
    threshold: float = COSINE_MIN_FP32
    photos: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> cosine, max_abs_error, ref_max_abs
    ms_per_batch: dict[str, float] = field(default_factory=dict)  # "batch N" -> ms (under qemu: emulated time)
    reason: str = ""
    # reduced precision with a classifier in the checkpoint: its top-1 agreement with fp32 PyTorch over
    # `agreement_images` views of real photos (compile.quantize.photo_views)
    top1_agreement: float | None = None
    agreement_images: int = 0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.format()

    def __rich__(self):  # `convhub verify DIR` prints the report with rich: plain text, no markup
        from rich.text import Text
        return Text(self.format())

    def format(self) -> str:
        """Human-readable lines for the CLI."""
        head = f"verification: {self.status}" + (f" ({self.method})" if self.method else "")
        lines = [head + (f": {self.reason}" if self.reason else "")]
        if self.outputs:
            lines.append(f"  {len(self.photos)} photos ({', '.join(self.photos)}), batches {self.batches}, "
                         f"cosine must be >= {self.threshold}")
            for name, f in self.outputs.items():
                mark = "ok" if f["cosine"] >= self.threshold else "FAIL"
                lines.append(f"  {name:<12} cosine {f['cosine']:.7f}  max abs error {f['max_abs_error']:.3g}  "
                             f"(|ref| max {f['ref_max_abs']:.3g})  {mark}")
        if self.top1_agreement is not None:
            mark = "ok" if self.top1_agreement >= AGREEMENT_MIN_BF16 else "FAIL"
            lines.append(f"  classifier top-1 agreement with fp32 {self.top1_agreement:.2%} over {self.agreement_images}"
                         f" views of real photos (must be >= {AGREEMENT_MIN_BF16:.0%})  {mark}")
        for k, v in self.ms_per_batch.items():
            lines.append(f"  {k}: {v:.1f} ms" + (" (emulated)" if self.method.startswith("qemu") else ""))
        return "\n".join(lines)


def photo_batch(model_name: str, n: int = DEFAULT_PHOTOS) -> tuple[list[str], np.ndarray]:
    """The first `n` sample photos, preprocessed for `model_name`: (names, float32 (n, 3, H, W))."""
    from hub.api import transforms  # not hub.transforms: the submodule of that name can shadow the function
    from hub.samples import sample_photos
    photos = sample_photos()[:n]
    if not photos:
        raise VerificationError("no sample photos found (they come with scikit-image); cannot verify")
    tf = transforms(model_name)
    return [p.name for p in photos], torch.stack([tf(p.open()) for p in photos]).numpy()


def reference_module(manifest: dict[str, Any]) -> torch.nn.Module:
    """The PyTorch module the artifact was compiled from, rebuilt from the manifest."""
    import hub
    m = manifest["model"]
    if not m.get("pretrained", True):
        torch.manual_seed(int(m.get("init_seed", 0)))  # random init is reproducible from the recorded seed
    module = hub.load(m["name"], stages=m["stages"], output=m["output"], pretrained=m.get("pretrained", True),
                      progress=False).eval()
    if m.get("weights_sha256") and getattr(module, "weights_sha256", None) != m["weights_sha256"]:
        raise VerificationError(f"the cached weights of {m['name']!r} (sha256 {module.weights_sha256}) are not the "
                                f"ones the artifact was built from ({m['weights_sha256']}); cannot compare")
    return module


def torch_outputs(module: torch.nn.Module, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    if isinstance(out, torch.Tensor):
        return {names[0]: out.numpy()}
    return {k: v.numpy() for k, v in out.items()}


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: min over samples of the cosine similarity, max abs error, and the reference's max |value|."""
    figures = {}
    for name, ref in reference.items():
        out = got.get(name)
        if out is None or out.shape != ref.shape:
            raise VerificationError(f"output {name!r}: artifact gave shape {None if out is None else out.shape}, "
                                    f"PyTorch {ref.shape}")
        a = ref.reshape(ref.shape[0], -1).astype(np.float64)
        b = out.reshape(out.shape[0], -1).astype(np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        both_zero = (na == 0) & (nb == 0)
        cos = np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-300))
        figures[name] = {"cosine": float(cos.min()), "max_abs_error": float(np.abs(a - b).max()),
                         "ref_max_abs": float(np.abs(a).max())}
    return figures


def _batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """Chunks of 2 then the rest, so the dynamic batch runs at two sizes, plus the first photo alone when no chunk
    is a single image: a single image runs the artifact's batch-1 entry (compile.cpu_pipeline.BATCH1_ENTRY)."""
    size = max(1, min(2, max_batch))
    chunks = [(i, min(i + size, n)) for i in range(0, n, size)]
    if n and not any(hi - lo == 1 for lo, hi in chunks):
        chunks.append((0, 1))
    return chunks


def how_to_verify(manifest: dict[str, Any]) -> tuple[str, str]:
    """(method, reason-if-not-verifiable-here) for an artifact on this machine."""
    t = manifest["target"]
    kind = t.get("verification")
    if kind == "host":
        if t["arch"] != this_arch():
            return "", f"built for {t['arch']}, this machine is {this_arch()}"
        missing = missing_cpu_flags(t.get("required_cpu_flags") or [])
        return ("", f"this CPU lacks {', '.join(missing)}") if missing else ("host", "")
    if kind == "qemu":
        return "qemu-aarch64", ""
    if kind == "gpu":
        return ("gpu", "") if gpu_present() else ("", "no NVIDIA GPU on this machine")
    return "", f"no {t['device']} device of this kind here; run the device-side check in DEPLOY.md"


def cosine_bar(manifest: dict[str, Any]) -> float:
    """The cosine an artifact must reach: COSINE_MIN_BF16 for --precision bf16 builds, else COSINE_MIN_FP32."""
    return COSINE_MIN_BF16 if manifest.get("precision", "fp32") == "bf16" else COSINE_MIN_FP32


def classifier_agreement(art: CompiledArtifact, manifest: dict[str, Any], module: torch.nn.Module
                         ) -> tuple[float, int] | None:
    """(top-1 agreement of the checkpoint's classifier between PyTorch fp32 and the artifact, images) over every
    view of the real photos (compile.quantize.photo_views); None without a classifier or pretrained weights."""
    from .quantize import classifier_head, head_input, photo_views
    if not manifest["model"].get("pretrained", True):
        return None
    head = classifier_head(manifest["model"]["name"])
    if head is None:
        return None
    _, x = photo_views(manifest["model"]["name"])
    out_names = [o["name"] for o in manifest["outputs"]]
    step = max(1, min(8, int(manifest["input"]["batch"]["max"])))
    ref, got = [], []
    for i in range(0, len(x), step):
        a = head_input(torch_outputs(module, x[i:i + step], out_names), module, head)
        b = head_input(dict(zip(out_names, art.run(x[i:i + step]))), module, head)
        if a is None or b is None:
            return None
        ref.append(head.top1(a))
        got.append(head.top1(np.asarray(b)))
    return float((np.concatenate(ref) == np.concatenate(got)).mean()), len(x)


def run_parity(artifact_dir: Path, manifest: dict[str, Any], module: torch.nn.Module, *,
               photos: int = DEFAULT_PHOTOS, min_cosine: float | None = None,
               log: Callable[[str], None] = print) -> VerificationReport:
    """Run the artifact (in-process, on the GPU, or under qemu) and PyTorch on the same photos and compare.
    `min_cosine` defaults to the artifact's precision's bar (cosine_bar); bf16 artifacts run in-process also
    report (and must reach AGREEMENT_MIN_BF16) their classifier's top-1 agreement with fp32, where there is one."""
    method, reason = how_to_verify(manifest)
    if not method:
        return VerificationReport("built, not verified here", "", reason=reason)
    names, x = photo_batch(manifest["model"]["name"], photos)
    out_names = [o["name"] for o in manifest["outputs"]]
    reference = torch_outputs(module, x, out_names)
    max_batch = int(manifest["input"]["batch"]["max"])
    chunks = _batches(len(x), max_batch)
    got: dict[str, list[np.ndarray]] = {n: [] for n in out_names}
    timings: dict[str, float] = {}
    if method == "qemu-aarch64":
        from .aarch64 import run_under_qemu
        # One process per chunk: qemu start-up is cheap next to emulating the model.
        for lo, hi in chunks:
            arrays, ms = run_under_qemu(artifact_dir, x[lo:hi], library=manifest["target"]["library"], log=log)
            timings[f"batch {hi - lo}"] = ms
            for n, a in zip(out_names, arrays):
                got[n].append(a)
    else:
        art = CompiledArtifact(artifact_dir, manifest)
        for lo, hi in chunks:
            art.run(x[lo:hi])  # warm-up: first calls allocate and (on GPU) compile kernels
            t0 = time.perf_counter()
            arrays = art.run(x[lo:hi])
            timings[f"batch {hi - lo}"] = (time.perf_counter() - t0) * 1e3
            for n, a in zip(out_names, arrays):
                got[n].append(a)
    # chunks may repeat a photo (the batch-1 run): compare each with the reference rows it ran
    reference = {n: np.concatenate([r[lo:hi] for lo, hi in chunks]) for n, r in reference.items()}
    figures = compare(reference, {n: np.concatenate(v) for n, v in got.items()})
    threshold = cosine_bar(manifest) if min_cosine is None else min_cosine
    bad = [n for n, f in figures.items() if not f["cosine"] >= threshold]
    status: Status = "failed" if bad else "passed"
    why = f"cosine below {threshold} for {', '.join(bad)}" if bad else ""
    report = VerificationReport(status, method, threshold, names, [hi - lo for lo, hi in chunks], figures, timings,
                                why)
    if manifest.get("precision", "fp32") != "fp32" and method != "qemu-aarch64":
        agreement = classifier_agreement(art, manifest, module)
        if agreement is not None:
            report.top1_agreement, report.agreement_images = agreement
            if report.top1_agreement < AGREEMENT_MIN_BF16:
                report.status = "failed"
                report.reason = "; ".join(filter(None, [why, f"classifier top-1 agreement with fp32 "
                                                             f"{report.top1_agreement:.2%} < {AGREEMENT_MIN_BF16:.0%}"]))
    return report


def verify_artifact(path: str | os.PathLike[str], *, photos: int = DEFAULT_PHOTOS,
                    log: Callable[[str], None] = print) -> VerificationReport:
    """Re-run the parity check of artifact directory `path` (under qemu for aarch64 artifacts).

    Checksums are checked first (ArtifactChecksumError); the report's `ok`/`status` say how parity went.
    """
    d = Path(path)
    manifest = read_manifest(d)
    check_files(d, manifest)
    method, reason = how_to_verify(manifest)
    if not method:
        return VerificationReport("built, not verified here", "", reason=reason)
    return run_parity(d, manifest, reference_module(manifest), photos=photos, log=log)


__all__ = ["VerificationReport", "verify_artifact", "run_parity", "compare", "photo_batch", "COSINE_MIN_FP32",
           "COSINE_MIN_BF16", "AGREEMENT_MIN_BF16", "cosine_bar", "structure_outputs"]

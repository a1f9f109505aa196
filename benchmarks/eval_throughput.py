"""Evaluation throughput (images/s) of open_clip image encoders with random weights, three ways:

  (a) ours      mergeflow's evaluation path: uint8 images staged on the device once, normalised there per
                batch, inference mode, fp16 autocast on CUDA (fp32 on the CPU), one head product per batch;
                timed per pass over the images after staging, as every sweep point after the first sees it
  (b) peers     what the published scripts do on every pass: decode image files with PIL, torchvision
                Resize/CenterCrop/ToTensor/Normalize in a DataLoader, fp32 forward
  (c) compute   the encoder's forward alone on one normalised batch already on the device (same precision as a)

and the ratios (a)/(b) and (a)/(c). With --parity it also counts how many predictions of a random
10-class head under fp16 and bf16 autocast equal the fp32 ones on the same images (ViT-B-32).

    python benchmarks/eval_throughput.py                      # ViT-B-32, ViT-B-16 and ViT-L-14 on CUDA if present
    python benchmarks/eval_throughput.py --device cpu --images 64 --large-images 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.modules.setdefault("transformers", None)  # type: ignore[arg-type]  (open_clip's HF text towers; unused)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mergeflow.evaluation.accuracy import EvalSettings, StagedImages, autocast_dtype, predict_staged  # noqa: E402
from mergeflow.models.clip import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, ModelSpec, build_clip  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SOURCE_SIZE = 256  # image files are larger than the input, so the peers' pipeline resizes as on real data


def spec_of(name: str) -> ModelSpec:
    import open_clip

    config = open_clip.get_model_config(name)
    kept = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
    config = {key: value for key, value in config.items() if key in kept}
    return ModelSpec(name=name, open_clip_config=config, image_mean=OPENAI_IMAGE_MEAN, image_std=OPENAI_IMAGE_STD)


def smooth_images(count: int, size: int, seed: int) -> np.ndarray:
    """uint8 NHWC images of smooth random colour fields (compressible like photographs, unlike noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 8, 8, 3), dtype=np.float32)
    fine = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(size, size),
                                           mode="bicubic", align_corners=False)  # fmt: skip
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def timed(function, repeats: int, device: torch.device) -> float:
    """Best wall time of `repeats` calls, after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def ours(visual, head, images: np.ndarray, spec: ModelSpec, device, settings: EvalSettings, repeats: int):
    start = time.perf_counter()
    staged = StagedImages(images, device, resident=True)
    staging = time.perf_counter() - start
    seconds = timed(lambda: predict_staged(visual, head, staged, spec, settings).cpu(), repeats, device)
    return len(images) / seconds, staging


def peers(visual, head, files: list[Path], spec: ModelSpec, device, batch_size: int, workers: int, repeats: int):
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    preprocess = transforms.Compose(
        [
            transforms.Resize(spec.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(spec.image_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.image_mean, spec.image_std),
        ]
    )

    class ImageFiles(Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, index: int) -> torch.Tensor:
            with Image.open(files[index]) as image:
                return preprocess(image.convert("RGB"))

    loader = DataLoader(ImageFiles(), batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)  # fmt: skip

    @torch.no_grad()
    def one_pass() -> None:
        for batch in loader:
            features = visual(batch.to(device))
            (F.normalize(features.float(), dim=-1) @ head.t()).argmax(dim=-1).cpu()

    return len(files) / timed(one_pass, repeats, device)


def compute(visual, spec: ModelSpec, device, batch_size: int, dtype, repeats: int) -> float:
    batch = torch.randn(batch_size, 3, spec.image_size, spec.image_size, device=device)

    @torch.inference_mode()
    def forward() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            visual(batch)

    return batch_size / timed(forward, repeats, device)


def parity(visual, head, images: np.ndarray, spec: ModelSpec, device, batch_size: int) -> dict[str, float]:
    """Percent of images whose fp16 and bf16 autocast predictions equal the fp32 ones."""
    staged = StagedImages(images, device, resident=True)
    full = predict_staged(visual, head, staged, spec, EvalSettings(batch_size=batch_size, precision="fp32"))
    agreement: dict[str, float] = {"images": len(images)}
    for precision in ("fp16", "bf16"):
        half = predict_staged(visual, head, staged, spec, EvalSettings(batch_size=batch_size, precision=precision))
        agreement[precision] = 100.0 * float((full == half).float().mean())
    return agreement


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16", "ViT-L-14"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2048, help="images per pass for ViT-B models")
    parser.add_argument("--large-images", type=int, default=512, help="images per pass for ViT-L models")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of (b)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per path (the best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--parity", action="store_true", help="also compare fp32 with fp16 and bf16 predictions (ViT-B-32)"
    )
    parser.add_argument("--out", type=Path, default=OUT / "eval_throughput.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    settings = EvalSettings(batch_size=args.batch_size)
    dtype = autocast_dtype(settings.precision, device)
    report = {"machine": machine(device), "device": str(device), "precision": str(dtype or torch.float32), "rows": []}
    print(f"machine: {report['machine']}; precision of (a) and (c): {report['precision']}")
    print("| model | images/pass | (a) ours img/s | (b) peers img/s | (c) compute img/s | (a)/(b) | (a)/(c) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        spec = spec_of(name)
        visual = build_clip(spec).visual.to(device).eval()
        head = F.normalize(torch.randn(10, spec.open_clip_config["embed_dim"], device=device), dim=-1)
        count = args.large_images if "-L-" in name else args.images
        batch_size = min(args.batch_size, count)
        images = smooth_images(count, SOURCE_SIZE, seed=1)
        resized = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(),
                                                  size=(spec.image_size, spec.image_size), mode="bilinear",
                                                  antialias=True)  # fmt: skip
        stored = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        with tempfile.TemporaryDirectory() as directory:
            from PIL import Image

            files = []
            for index, image in enumerate(images):
                path = Path(directory) / f"{index:06d}.png"
                Image.fromarray(image).save(path)
                files.append(path)
            ours_rate, staging_s = ours(visual, head, stored, spec, device, EvalSettings(batch_size=batch_size),
                                        args.repeats)  # fmt: skip
            peers_rate = peers(visual, head, files, spec, device, batch_size, args.workers, args.repeats)
        compute_rate = compute(visual, spec, device, batch_size, dtype, args.repeats)
        row = {
            "model": name, "images": count, "batch_size": batch_size, "ours": ours_rate, "peers": peers_rate,
            "compute": compute_rate, "ours_over_peers": ours_rate / peers_rate,
            "ours_over_compute": ours_rate / compute_rate, "staging_s": staging_s,
        }  # fmt: skip
        if args.parity and name == "ViT-B-32":
            row["parity"] = parity(visual, head, stored, spec, device, batch_size)
        report["rows"].append(row)
        write_report(args.out, report)  # after every model: a run stopped at its time limit keeps what it measured
        print(f"| {name} | {count} | {ours_rate:.1f} | {peers_rate:.1f} | {compute_rate:.1f} | "
              f"{row['ours_over_peers']:.2f} | {row['ours_over_compute']:.2f} |", flush=True)  # fmt: skip
        del visual
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in report["rows"]:
        if "parity" in row:
            agreement = row["parity"]
            print(f"parity {row['model']}: predictions equal to fp32 on {agreement['fp16']:.2f}% (fp16) and "
                  f"{agreement['bf16']:.2f}% (bf16) of {agreement['images']} images")  # fmt: skip
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checks that span config sections (the JSON schema sees one key at a time).

Each problem is reported with the key that holds the bad value, e.g.
``pretrain.methods.nepa.corpus[1].dataset: 'scan' is not a dataset (known: demo-mesh, demo-scan)``.
"""

from __future__ import annotations

# Which dataset kinds each token backend can read (udfgrid needs only grid arrays, which point clouds have too).
BACKEND_KINDS = {
    "mesh": ("mesh",),
    "pointcloud": ("mesh", "pointcloud"),
    "pointcloud_noray": ("mesh", "pointcloud"),
    "voxel": ("mesh", "pointcloud"),
    "udfgrid": ("mesh", "pointcloud"),
}
# The unpaired split a backend may read: a pc-only store cannot feed a mesh backend.
UNPAIRED_BACKENDS = {
    "train_mesh": ("mesh",),
    "train_pc": ("pointcloud", "pointcloud_noray", "voxel"),
    "train_udf": ("udfgrid",),
}


def reference_problems(config: dict) -> list[str]:
    """Human-readable problems, each starting with the offending key; empty when the config is coherent."""
    problems: list[str] = []
    datasets = config.get("datasets", {})
    known = ", ".join(sorted(datasets))
    methods = config.get("pretrain", {}).get("methods", {})
    for name, method in methods.items():
        for i, part in enumerate(method.get("corpus", [])):
            where = f"pretrain.methods.{name}.corpus[{i}]"
            ds = datasets.get(part["dataset"])
            if ds is None:
                problems.append(f"{where}.dataset: {part['dataset']!r} is not a dataset (known: {known})")
                continue
            if ds["kind"] not in BACKEND_KINDS[part["backend"]]:
                problems.append(f"{where}.backend: {part['backend']!r} cannot read {ds['kind']} dataset "
                                f"{part['dataset']!r}")
            if part["split"] in UNPAIRED_BACKENDS:
                if ds["kind"] != "mesh":
                    problems.append(f"{where}.split: unpaired splits exist for mesh datasets only, "
                                    f"{part['dataset']!r} is {ds['kind']}")
                elif part["backend"] not in UNPAIRED_BACKENDS[part["split"]]:
                    problems.append(f"{where}.backend: {part['backend']!r} may not read the {part['split']} store "
                                    f"(allowed: {', '.join(UNPAIRED_BACKENDS[part['split']])})")
    finetune = config.get("finetune", {})
    tokens = config.get("tokens", {})
    splits = config.get("splits", {})
    for i, name in enumerate(finetune.get("datasets", [])):
        ds = datasets.get(name)
        if ds is None:
            problems.append(f"finetune.datasets[{i}]: {name!r} is not a dataset (known: {known})")
        elif ds["kind"] not in BACKEND_KINDS[finetune["backend"]]:
            problems.append(f"finetune.backend: {finetune['backend']!r} cannot read {ds['kind']} dataset {name!r}")
    for i, name in enumerate(finetune.get("methods", [])):
        if name != "scratch" and name not in methods:
            problems.append(f"finetune.methods[{i}]: {name!r} is neither scratch nor a pretrain method "
                            f"(known: {', '.join(['scratch', *sorted(methods)])})")
    for i, k in enumerate(finetune.get("k", [])):
        if k and k not in splits.get("fewshot_k", []):
            problems.append(f"finetune.k[{i}]: K={k} has no few-shot split (splits.fewshot_k: {splits.get('fewshot_k')})")
    for i, seed in enumerate(finetune.get("seeds", [])):
        if seed not in splits.get("fewshot_seeds", []):
            problems.append(f"finetune.seeds[{i}]: seed {seed} has no few-shot split "
                            f"(splits.fewshot_seeds: {splits.get('fewshot_seeds')})")
    for key in ("n_point", "n_ray"):
        if key in finetune and key in tokens and finetune[key] > tokens[key]:
            problems.append(f"finetune.{key}: {finetune[key]} is more than the pretrained layout holds "
                            f"(tokens.{key} = {tokens[key]})")
    return problems

"""Checks that span config sections (the JSON schema sees one key at a time).

Each problem is reported with the key that holds the bad value, e.g.
``pretrain.methods.nepa.corpus[1].dataset: 'scan' is not a dataset (known: demo-mesh, demo-scan)``.
"""

from __future__ import annotations

from .finetune_rows import row_architecture, row_kind

# Backends whose primitive sees the surface points patch tokens are made of (udfgrid sees only the grid).
PATCH_BACKENDS = ("mesh", "pointcloud", "pointcloud_noray", "voxel")

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
                problems.append(
                    f"{where}.backend: {part['backend']!r} cannot read {ds['kind']} dataset {part['dataset']!r}"
                )
            if part["split"] in UNPAIRED_BACKENDS:
                if ds["kind"] != "mesh":
                    problems.append(
                        f"{where}.split: unpaired splits exist for mesh datasets only, "
                        f"{part['dataset']!r} is {ds['kind']}"
                    )
                elif part["backend"] not in UNPAIRED_BACKENDS[part["split"]]:
                    problems.append(
                        f"{where}.backend: {part['backend']!r} may not read the {part['split']} store "
                        f"(allowed: {', '.join(UNPAIRED_BACKENDS[part['split']])})"
                    )
    problems += token_kind_problems(config)
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
        try:
            row_kind(name, config)
        except ValueError as exc:
            problems.append(f"finetune.methods[{i}]: {exc}")
    for i, k in enumerate(finetune.get("k", [])):
        if k and k not in splits.get("fewshot_k", []):
            problems.append(
                f"finetune.k[{i}]: K={k} has no few-shot split (splits.fewshot_k: {splits.get('fewshot_k')})"
            )
    for i, seed in enumerate(finetune.get("seeds", [])):
        if seed not in splits.get("fewshot_seeds", []):
            problems.append(
                f"finetune.seeds[{i}]: seed {seed} has no few-shot split "
                f"(splits.fewshot_seeds: {splits.get('fewshot_seeds')})"
            )
    problems += episode_problems(finetune.get("episodes", {}), splits.get("episodes", {}))
    for key in ("n_point", "n_ray"):
        if key in finetune and key in tokens and finetune[key] > tokens[key]:
            problems.append(
                f"finetune.{key}: {finetune[key]} is more than the pretrained layout holds "
                f"(tokens.{key} = {tokens[key]})"
            )
    return problems + embedding_problems(config) + eval_problems(config)


def token_kind_problems(config: dict) -> list[str]:
    """point_mae needs patch tokens, and patch tokens need a backend that sees the surface points."""
    problems = []
    finetune = config.get("finetune", {})
    for name, method in config.get("pretrain", {}).get("methods", {}).items():
        kind = row_architecture(name, config)["tokens"].get("kind", "query")
        if method.get("objective") == "point_mae" and kind != "patch":
            problems.append(f"pretrain.methods.{name}.objective: point_mae needs patch tokens (tokens.kind: patch)")
        if kind == "patch":
            for i, part in enumerate(method.get("corpus", [])):
                if part.get("backend") not in PATCH_BACKENDS:
                    problems.append(
                        f"pretrain.methods.{name}.corpus[{i}].backend: {part.get('backend')!r} cannot "
                        f"give patch tokens (no surface points; use one of {', '.join(PATCH_BACKENDS)})"
                    )
    for i, row in enumerate(finetune.get("methods", [])):
        try:
            kind = row_architecture(row, config)["tokens"].get("kind", "query")
        except ValueError:
            continue  # reported by the row check
        if kind == "patch" and finetune.get("backend") not in PATCH_BACKENDS:
            problems.append(f"finetune.backend: {finetune.get('backend')!r} cannot give patch tokens to row {row!r}")
    return problems


def episode_problems(jobs: dict, split: dict) -> list[str]:
    """finetune.episodes runs only settings and folds that splits.episodes draws (as finetune.k needs fewshot_k)."""
    problems = []
    for i, setting in enumerate(jobs.get("settings", [])):
        if setting not in split.get("settings", []):
            problems.append(
                f"finetune.episodes.settings[{i}]: {setting!r} has no episodes "
                f"(splits.episodes.settings: {split.get('settings')})"
            )
    for i, fold in enumerate(jobs.get("folds") or []):
        if fold >= split.get("folds", 0):
            problems.append(
                f"finetune.episodes.folds[{i}]: fold {fold} does not exist "
                f"(splits.episodes.folds = {split.get('folds')})"
            )
    return problems


def _dataset_problems(where: str, names: list[str], datasets: dict, kinds: tuple[str, ...]) -> list[str]:
    problems = []
    for i, name in enumerate(names):
        ds = datasets.get(name)
        if ds is None:
            problems.append(f"{where}[{i}]: {name!r} is not a dataset (known: {', '.join(sorted(datasets))})")
        elif ds["kind"] not in kinds:
            problems.append(f"{where}[{i}]: {name!r} is a {ds['kind']} dataset (expected {' or '.join(kinds)})")
    return problems


def embedding_spaces(config: dict) -> set[str]:
    """The ``<modality>/<dataset>/<model>`` spaces the embed section produces."""
    embed = config.get("embed", {})
    image, text, shape = embed.get("image", {}), embed.get("text", {}), embed.get("shape", {})
    spaces = {f"image/{ds}/{image.get('name')}" for ds in [*image.get("datasets", []), *image.get("depth_views", [])]}
    spaces |= {f"text/{ds}/{text.get('name')}" for ds in text.get("datasets", [])}
    spaces |= {f"shape/{ds}/{m}" for ds in shape.get("datasets", []) for m in shape.get("methods", [])}
    return spaces


def embedding_problems(config: dict) -> list[str]:
    """Embeddings, difficulty bands and heads: datasets of the right kind, known methods and spaces."""
    datasets = config.get("datasets", {})
    methods = config.get("pretrain", {}).get("methods", {})
    embed = config.get("embed", {})
    cached = ("mesh", "pointcloud")
    problems = _dataset_problems(
        "embed.image.datasets", embed.get("image", {}).get("datasets", []), datasets, ("image",)
    )
    problems += _dataset_problems(
        "embed.image.depth_views", embed.get("image", {}).get("depth_views", []), datasets, cached
    )
    problems += _dataset_problems(
        "embed.text.datasets", embed.get("text", {}).get("datasets", []), datasets, ("mesh", "pointcloud", "image")
    )
    shape = embed.get("shape", {})
    problems += _dataset_problems("embed.shape.datasets", shape.get("datasets", []), datasets, cached)
    for i, name in enumerate(shape.get("datasets", [])):
        kind = datasets.get(name, {}).get("kind")
        if kind and kind not in BACKEND_KINDS[shape.get("backend", "mesh")]:
            problems.append(f"embed.shape.backend: {shape['backend']!r} cannot read {kind} dataset {name!r}")

    def method_problem(where: str, name: str) -> list[str]:
        if name in methods:
            return []
        return [f"{where}: {name!r} is not a pretrain method (known: {', '.join(sorted(methods))})"]

    for i, name in enumerate(shape.get("methods", [])):
        problems += method_problem(f"embed.shape.methods[{i}]", name)
    produced = embedding_spaces(config)
    difficulty = config.get("difficulty", {})
    for i, space in enumerate(difficulty.get("spaces", [])):
        if space not in produced:
            problems.append(
                f"difficulty.spaces[{i}]: {space!r} is not an embedding the embed section produces "
                f"(produced: {', '.join(sorted(produced)) or 'none'})"
            )
    head = config.get("metric_head", {})
    if head.get("space") and head["space"] not in difficulty.get("spaces", []):
        problems.append(f"metric_head.space: {head['space']!r} has no difficulty bands (add it to difficulty.spaces)")
    for key in head.get("optuna", {}).get("search", {}):
        if key not in head:
            problems.append(f"metric_head.optuna.search.{key}: not a metric_head setting")
    align = config.get("align_text3d", {})
    problems += _dataset_problems("align_text3d.datasets", align.get("datasets", []), datasets, ("mesh",))
    if align.get("datasets"):
        problems += method_problem("align_text3d.method", align.get("method", ""))
    captions = align.get("captions")
    if align.get("datasets") and captions and datasets.get(captions.get("dataset"), {}).get("kind") != "image":
        images = ", ".join(sorted(d for d, c in datasets.items() if c["kind"] == "image"))
        problems.append(
            f"align_text3d.captions.dataset: {captions.get('dataset')!r} is not an image dataset "
            f"(image datasets: {images})"
        )
    kfold = config.get("splits", {}).get("kfold", 0)
    for i, fold in enumerate(align.get("folds", [])):
        if fold >= kfold:
            problems.append(f"align_text3d.folds[{i}]: fold {fold} does not exist (splits.kfold = {kfold})")

    # the retrieval heads take shape datasets (on a pretrain method's encoder) and image datasets (on embed.image)
    def shapes_in(names: list[str]) -> list[str]:
        return [name for name in names if datasets.get(name, {}).get("kind") != "image"]

    retrieval = config.get("retrieval_head", {})
    problems += _dataset_problems(
        "retrieval_head.datasets", retrieval.get("datasets", []), datasets, (*cached, "image")
    )
    if shapes_in(retrieval.get("datasets", [])):
        problems += method_problem("retrieval_head.method", retrieval.get("method", ""))
    promptsg = config.get("promptsg", {})
    problems += _dataset_problems("promptsg.datasets", promptsg.get("datasets", []), datasets, (*cached, "image"))
    if shapes_in(promptsg.get("datasets", [])):
        problems += method_problem("promptsg.method", promptsg.get("method", ""))
    capacity = config.get("tokens", {}).get("n_point")
    if shapes_in(promptsg.get("datasets", [])) and capacity is not None and promptsg.get("n_point", 0) > capacity:
        problems.append(
            f"promptsg.n_point: {promptsg['n_point']} exceeds the pretrained layout's tokens.n_point ({capacity})"
        )
    knobs = set(promptsg) - {"datasets", "variants", "method"}
    for name, overrides in (promptsg.get("variants") or {}).items():
        for key in sorted(set(overrides) - knobs):
            problems.append(f"promptsg.variants.{name}.{key}: not a promptsg setting")
    return problems


def eval_problems(config: dict) -> list[str]:
    """UCPR and CPAC: datasets that have what the backends read, known methods, independent seeds."""
    datasets = config.get("datasets", {})
    methods = config.get("pretrain", {}).get("methods", {})
    tokens = config.get("tokens", {})
    evals = config.get("eval", {})
    problems: list[str] = []
    ucpr, cpac = evals.get("ucpr", {}), evals.get("cpac", {})
    problems += _dataset_problems("eval.ucpr.datasets", ucpr.get("datasets", []), datasets, ("mesh", "pointcloud"))
    problems += _dataset_problems("eval.cpac.datasets", cpac.get("datasets", []), datasets, ("mesh",))
    for section, name in ((ucpr, "ucpr"), (cpac, "cpac")):
        for i, method in enumerate(section.get("methods", []) if section.get("datasets") else []):
            if method not in methods:
                problems.append(
                    f"eval.{name}.methods[{i}]: {method!r} is not a pretrain method "
                    f"(known: {', '.join(sorted(methods))})"
                )
            elif row_architecture(method, config)["tokens"].get("kind", "query") != "query":
                problems.append(
                    f"eval.{name}.methods[{i}]: {method!r} reads patch tokens; {name} is defined on "
                    "query tokens (distance queries across primitives)"
                )
    for i, pair in enumerate(ucpr.get("pairs", [])):
        for side, backend in zip(("query", "gallery"), pair):
            for ds in ucpr.get("datasets", []):
                kind = datasets.get(ds, {}).get("kind")
                if kind and kind not in BACKEND_KINDS[backend]:
                    problems.append(
                        f"eval.ucpr.pairs[{i}]: {side} backend {backend!r} cannot read {kind} dataset {ds!r}"
                    )
    if ucpr.get("datasets") and ucpr.get("query_seed") == ucpr.get("gallery_seed"):
        problems.append(
            f"eval.ucpr.gallery_seed: equal to eval.ucpr.query_seed ({ucpr.get('query_seed')}); with one "
            "seed query and gallery share their query points and retrieval is trivial"
        )
    for name, section in (("ucpr", ucpr), ("cpac", cpac)):
        for key in ("n_point", "n_ray"):
            if section.get("datasets") and key in section and key in tokens and section[key] > tokens[key]:
                problems.append(
                    f"eval.{name}.{key}: {section[key]} is more than the pretrained layout holds "
                    f"(tokens.{key} = {tokens[key]})"
                )
    if cpac.get("datasets") and "n_point" in tokens and cpac.get("n_context", 0) >= tokens["n_point"]:
        problems.append(
            f"eval.cpac.n_context: {cpac['n_context']} leaves no point position for the queries in the "
            f"pretrained layout (tokens.n_point = {tokens['n_point']}): use at most "
            f"{tokens['n_point'] - 1}"
        )
    if cpac.get("datasets") and cpac.get("n_context", 0) + cpac.get("n_query", 0) > config.get("cache", {}).get(
        "pt_pool", float("inf")
    ):
        problems.append(
            f"eval.cpac.n_query: n_context + n_query = {cpac['n_context'] + cpac['n_query']} exceeds "
            f"the query pool (cache.pt_pool = {config['cache']['pt_pool']})"
        )
    return problems

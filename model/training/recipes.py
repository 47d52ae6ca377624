"""Named training recipes: the exact options that produce a shipped weights file, so one command reproduces it.

    s2crnet train --recipe NAME --run-dir runs/NAME            # each leg stops after its max-minutes …
    s2crnet train --recipe NAME --run-dir runs/NAME --resume   # … and the next leg continues exactly

A recipe only sets defaults: any option given on the command line wins. Paths are relative to the repository
root with `../shared` beside it, as on the development machines and in CI.
"""

__all__ = ["RECIPES", "recipe_defaults"]

SHARED = "../shared/data"
OBJECTS = "../objects/manifest.csv"  # the object corpus, built beside the checkout (model.training.data.OBJECTS_BUILD)

RECIPES: dict[str, dict] = {
    # ImageNet EfficientNet-Lite0 with its last two blocks and head fine-tuned at a fifth of the rate; harm-weighted
    # loss; colour-transfer donors drawn from any photo; checkpoints chosen on the real triples (best at step 1000 of
    # a 2,500-step schedule, where the leg stops).
    "lite0-real": {
        "photos": [f"{SHARED}/photos/manifest.csv"], "val_real": [f"{SHARED}/iharmony4_val"],
        "backbone": "efficientnet_lite0", "trainable_blocks": 3, "backbone_lr_scale": 0.2,
        "steps": 2500, "stop_step": 1000, "warmup": 200, "val_every": 250,
        "harm_weight": 1.0, "same_category_share": 0.0, "untouched_share": 0.2, "threads": 2, "max_minutes": 115.0,
    },
    # lite0-real on today's photos and the 12,845-photo object corpus, drawn alike, over its full 2,500 steps: the
    # baseline that each generator lever (--render-share, --same-kind-share) is measured against.
    "lite0-objects": {
        "photos": [f"{SHARED}/photos/manifest.csv", OBJECTS], "val_real": [f"{SHARED}/iharmony4_val"],
        "backbone": "efficientnet_lite0", "trainable_blocks": 3, "backbone_lr_scale": 0.2,
        "steps": 2500, "warmup": 200, "val_every": 250, "looks": f"{SHARED}/luts/film_luts.npz",
        "harm_weight": 1.0, "same_category_share": 0.0, "untouched_share": 0.2, "threads": 2, "max_minutes": 115.0,
    },
}


# Shipped (2026-12-04): lite0-objects with two pairs in five made as HAdobe5k/Hday2night were (the object from
# another film look, exposure, white balance or time of day of the same photo); one torch thread.
RECIPES["lite0-objects-render"] = {**RECIPES["lite0-objects"], "render_share": 0.4, "threads": 1}


def recipe_defaults(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    return dict(RECIPES[name])

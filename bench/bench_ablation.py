"""Ablation attributions vs Captum's ``FeatureAblation`` on the model shapes people serve.

For each shape of :mod:`bench.served_models` (the simulator's snapshot, a
BatchNorm-first MLP, a wide-and-deep model, a LayerNorm-first MLP), exported with
``torch.export``, over 10,000 rows (full run) with the column means as baselines:

- ``ablation_<shape>_vs_captum_default``: Captum with its defaults
  (``perturbations_per_eval=1``, no feature mask: one group per feature);
- ``ablation_<shape>_vs_captum_best``: its fastest ``perturbations_per_eval`` of
  :data:`PER_EVAL` (a feature mask of one group per feature gives the same
  ablations as none, so it is not a setting of its own).

One thread for every side. All of them take turns in each round (the machine is
shared), best of the rounds; the ratio is on CPU time, wall time is in
``params``. ``plain_forwards_s`` is ``F + 1`` plain forward passes of the rows:
the least any method that runs the whole model per ablation does, so
``captum_default / plain_forwards`` shows how close Captum is to that floor; the
``max_abs_difference`` is against every Captum setting.
"""

from __future__ import annotations

import torch

from bench.served_models import SHAPES, served_model
from bench.timing import interleaved
from hawkeye_dagster.analysis.ablation import ablation_attributions
from hawkeye_dagster.analysis.feature_prefix import linear_frontier

#: Captum's ``perturbations_per_eval`` settings tried (those above the feature count skipped)
PER_EVAL = (1, 4, 16, 64)


def shape_vs_captum(name: str, rows: int, repeats: int) -> list[dict]:
    from captum.attr import FeatureAblation

    served = served_model(name)
    x = served.inputs(rows)
    baselines = x.mean(dim=0)
    captum = FeatureAblation(lambda t: served.module(t).reshape(-1))
    settings = [k for k in PER_EVAL if k <= served.n_features]
    fns = {"ours": lambda: ablation_attributions(served.module, x, baselines),
           "plain_forwards": lambda: [served.module(x) for _ in range(served.n_features + 1)]}
    for k in settings:
        fns[f"captum_{k}"] = lambda k=k: captum.attribute(x, baselines=baselines[None],
                                                          perturbations_per_eval=k)
    ours = fns["ours"]()
    difference = max(float((ours - fns[f"captum_{k}"]()).abs().max()) for k in settings)
    times = interleaved(fns, repeats)  # the calls above warmed every side up
    cpu = {key: c for key, (_, c) in times.items()}
    best = min(settings, key=lambda k: cpu[f"captum_{k}"])
    params = {"rows": rows, "features": served.n_features, "kind": served.kind,
              "shortcut": linear_frontier(served.module) is not None,
              "max_abs_difference": difference, "threads": 1, "rounds": repeats,
              "timing": "best CPU time of interleaved rounds",
              "ours_wall_s": times["ours"][0], "plain_forwards_s": cpu["plain_forwards"],
              "captum_default_over_plain_forwards": cpu["captum_1"] / cpu["plain_forwards"]}
    return [
        {"name": f"ablation_{name}_vs_captum_default", "project_s": cpu["ours"],
         "reference": "Captum FeatureAblation (defaults: perturbations_per_eval=1)",
         "reference_s": cpu["captum_1"], "ratio": cpu["captum_1"] / cpu["ours"],
         "params": params | {"captum_wall_s": times["captum_1"][0]}},
        {"name": f"ablation_{name}_vs_captum_best", "project_s": cpu["ours"],
         "reference": f"Captum FeatureAblation (perturbations_per_eval={best}, fastest of "
                      f"{', '.join(map(str, settings))})",
         "reference_s": cpu[f"captum_{best}"], "ratio": cpu[f"captum_{best}"] / cpu["ours"],
         "params": params | {"perturbations_per_eval": best,
                             "captum_wall_s": times[f"captum_{best}"][0]}},
    ]


def run(quick: bool) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [r for name in SHAPES
                for r in shape_vs_captum(name, 2_000 if quick else 10_000, 1 if quick else 3)]
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

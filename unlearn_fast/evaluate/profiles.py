"""Sizes of the evaluation runs, chosen to fit a time budget (benchmarks/README.md records what they took).

cpu: 2 cores, ≤ 60 minutes each. counterfactual: a 400-image subset of the default data, 300 training steps of 64
     (48 epochs; ≈ 2.2 min per run on one core), 3 queries, 3 removal sizes: 38 runs, two at a time.
     groundtruth: rank among 1,000 default images (+ the exemplars or copies), scoring at 4 timesteps × 2 flips.
gpu: meant for one H200 in ≤ 8 minutes: the full default set, more queries, longer training, eight runs at a time
     (`--device auto` puts every run and every model on the GPU). Not run yet: no GPU has been available to this
     project, so its time budget is a plan, not a measurement.
     lds: 400 training images, M = 64 half-subsets (+ 8 retrained with a second seed for the ceiling) at 200 steps of
     64 (≈ 1.5 min per run on one core, two at a time), 25 generated + 25 held-out queries: ≤ 90 minutes.
     groups: 8 skin-tone families (half large) + 300 other images, 2 held-out members per family as queries, one
     retrain without each family + one other seed (10 runs of 300 steps, two at a time).
tiny: a smoke test of the whole pipeline in about a minute (the tests use it).
"""
from __future__ import annotations

PROFILES = {
    "cpu": {"counterfactual": {"train_images": 400, "queries": 3, "steps": 300, "batch_size": 64,
                               "warmup_steps": 30, "methods": ("abu", "dtrak", "pixel"), "random_draws": 3,
                               "noise_seeds": (1,), "method_options": {"dtrak": {"dim": 2048}}},
            "groundtruth": {"base_images": 1000, "methods": ("abu", "dtrak", "pixel", "random"),
                            "method_options": {"dtrak": {"dim": 2048}}},
            "lds": {"train_images": 400, "subsets": 64, "ceiling_subsets": 8, "generated_queries": 25,
                    "heldout_queries": 25, "steps": 200, "batch_size": 64, "warmup_steps": 20,
                    "methods": ("abu", "dtrak", "trak", "pixel", "random"),
                    "method_options": {"dtrak": {"dim": 2048}, "trak": {"dim": 2048}}},
            "unlearning": {"queries": 6, "unrelated": 10, "alphas": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)},
            "groups": {"groups": 8, "queries_per_group": 2, "other_images": 300, "steps": 300, "batch_size": 64,
                       "warmup_steps": 30, "methods": ("abu", "dtrak", "pixel", "random"),
                       "method_options": {"dtrak": {"dim": 2048}}},
            "workers": 2, "threads": 1},
    "gpu": {"counterfactual": {"train_images": None, "queries": 10, "steps": 1500, "batch_size": 128,
                               "warmup_steps": 100, "methods": ("abu", "dtrak", "trak", "pixel"), "random_draws": 3,
                               "noise_seeds": (1, 2),
                               "method_options": {"dtrak": {"dim": 8192}, "trak": {"dim": 8192}}},
            "groundtruth": {"base_images": None, "methods": ("abu", "dtrak", "trak", "pixel", "random"),
                            "scoring_timesteps": 10, "method_options": {"dtrak": {"dim": 8192}, "trak": {"dim": 8192}}},
            "lds": {"train_images": None, "subsets": 128, "ceiling_subsets": 16, "generated_queries": 100,
                    "heldout_queries": 100, "steps": 1500, "batch_size": 128, "warmup_steps": 100,
                    "methods": ("abu", "dtrak", "trak", "pixel", "random"),
                    "method_options": {"dtrak": {"dim": 8192}, "trak": {"dim": 8192}}},
            "unlearning": {"queries": 20, "unrelated": 20, "fisher_examples": None,
                           "alphas": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)},
            "groups": {"groups": 16, "queries_per_group": 2, "other_images": 2000, "steps": 1500, "batch_size": 128,
                       "warmup_steps": 100, "methods": ("abu", "dtrak", "trak", "pixel", "random"),
                       "method_options": {"dtrak": {"dim": 8192}, "trak": {"dim": 8192}}},
            "workers": 8, "threads": 2},
    "tiny": {"counterfactual": {"train_images": 48, "queries": 2, "steps": 20, "batch_size": 16, "warmup_steps": 2,
                                "fractions": (0.05, 0.2), "methods": ("abu", "pixel"), "random_draws": 2,
                                "noise_seeds": (1,), "loss_timesteps": 10, "query_steps": 10,
                                "validation_prompts": 2},
             "groundtruth": {"base_images": 60, "methods": ("abu", "pixel", "random"), "prompts": 3,
                             "custom_steps": 20, "planted_copies": (2,), "domain_images": 1, "domain_copies": (2,), "planted_queries": 2, "planted_steps": 20,
                             "planted_batch_size": 16, "query_steps": 10, "validation_prompts": 2,
                             "abu_step_factors": (1.0,)},
             "lds": {"train_images": 24, "subsets": 6, "ceiling_subsets": 3, "generated_queries": 2,
                     "heldout_queries": 2, "steps": 8, "batch_size": 8, "warmup_steps": 1,
                     "methods": ("abu", "pixel", "random"), "loss_timesteps": 5, "query_steps": 5,
                     "validation_prompts": 2, "abu_step_factors": (1.0,)},
             "unlearning": {"queries": 2, "unrelated": 2, "alphas": (0.01, 1.0), "draws": 16, "fisher_examples": 64,
                            "sample_steps": 5, "loss_timesteps": 4},
             "groups": {"groups": 2, "queries_per_group": 1, "other_images": 20, "steps": 20, "batch_size": 16,
                        "warmup_steps": 2, "methods": ("abu", "pixel", "random"), "loss_timesteps": 10,
                        "query_steps": 10, "validation_prompts": 2, "abu_step_factors": (1.0,)},
             "workers": 1, "threads": 1},
}

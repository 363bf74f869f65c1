"""Training in one place: the recipe (config.py: one TrainingConfig, the `train` command's flags generated from it),
the trainer (trainer.py: the VAE and diffusion loops over a TrainingSet), a run (run.py: a TrainRequest to a model
folder with training.json) and retraining jobs (retraining.py: leave-K-out and subset retrains, resumable and
lock-protected). It stands on models/, data/, store/ and engine.device; evaluate/ and cli/ stand on it."""

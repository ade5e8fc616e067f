"""Fine-tuning with checkpoints that record the learning rate in force."""
from tracin_jax.train.checkpoints import CheckpointInfo, CheckpointStore
from tracin_jax.train.setup import RunSetup, load_run, prepare_run
from tracin_jax.train.trainer import (
    SimulatedCrash, TrainResult, TrainState, WorkdirLock, check_train_config, evaluate, make_eval_step,
    make_optimizer, make_schedule, make_train_step, predict_proba, train, weighted_cross_entropy)

__all__ = [
    "CheckpointInfo", "CheckpointStore", "RunSetup", "load_run", "prepare_run", "SimulatedCrash",
    "TrainResult", "TrainState", "WorkdirLock", "check_train_config", "evaluate", "make_eval_step",
    "make_optimizer", "make_schedule", "make_train_step", "predict_proba", "train", "weighted_cross_entropy",
]

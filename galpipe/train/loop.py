"""The per-worker training loop run by Ray Train, and the plain-PyTorch pieces it is made of.

:func:`train_loop_per_worker` takes one config dict (built by :func:`galpipe.train.trainer.
train_model`); data arrives through ``ray.train.get_dataset_shard``; reporting, checkpointing
and MLflow logging happen at one place in the loop. Everything else here is plain PyTorch and
testable without Ray: :class:`Objective` (network plus loss as one module, so that DDP sees one
forward per step), :func:`train_step`, :func:`learning_rate`, :func:`validation_sums`.

Schedule: Adam at ``learning_rate``, divided by ``lr_drop_factor`` from step
``int(lr_drop_at * steps)`` on; ``steps`` optimiser steps in total, iterating epochs as needed.
A step consumes ``batch_size`` galaxies over all workers; a contrastive (SCL) step splits each
worker's share into two equal sub-batches A and B.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import tempfile
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from galpipe.models import LossWeights, MassNetwork, build_network, mi_loss, scl_loss
from galpipe.train.inputs import dihedral, network_inputs

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


class Objective(nn.Module):
    """A mass network and its training loss: ``forward`` returns (loss, unweighted terms).

    Wrapping the loss in the module makes every parameter's use go through one DDP forward,
    which DDP needs to synchronise gradients correctly (the contrastive loss calls the network's
    encode/decode/logits methods, not its forward).
    """

    def __init__(self, network: MassNetwork, weights: LossWeights | None = None,
                 smoothing_bins: float = 0.0) -> None:
        super().__init__()
        self.network = network
        self.weights = weights
        self.smoothing_bins = smoothing_bins

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None, bins: torch.Tensor,
                x_aug: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.network.training_kind == "mi":
            loss = mi_loss(self.network, x, extra, bins, self.smoothing_bins)
            return loss, {"cross_entropy": loss.detach()}

        half = x.shape[0] // 2
        if half == 0 or x.shape[0] % 2:
            raise ValueError(f"a contrastive step needs an even batch of at least 2 galaxies, "
                             f"got {x.shape[0]}")

        def cut(t: torch.Tensor | None, first: bool) -> torch.Tensor | None:
            return None if t is None else (t[:half] if first else t[half:])

        total, terms = scl_loss(self.network, x[:half], cut(extra, True), bins[:half],
                                x[half:], cut(extra, False), bins[half:],
                                x_aug_a=cut(x_aug, True), x_aug_b=cut(x_aug, False),
                                weights=self.weights)
        return total, {name: value.detach() for name, value in terms.items()}


def learning_rate(step: int, steps: int, base: float, drop_at: float, drop_factor: float) -> float:
    """Learning rate of optimiser step ``step`` (1-based) of ``steps``."""
    return base / drop_factor if step > int(drop_at * steps) else base


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, x: torch.Tensor, extra: torch.Tensor | None,
               bins: torch.Tensor, x_aug: torch.Tensor | None = None,
               autocast_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step; returns the detached loss and its terms.

    ``objective`` may be DDP-wrapped (gradients are then averaged over workers during
    ``backward``). ``autocast_dtype`` (e.g. float16 on GPU) enables mixed precision; the
    scaler must then be enabled too.
    """
    optimizer.zero_grad(set_to_none=True)
    device_type = x.device.type
    with torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        loss, terms = objective(x, extra, bins, x_aug)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.detach(), **terms}


@torch.no_grad()
def validation_sums(network: MassNetwork, batches, n_inputs: int, device: torch.device,
                    rank: int = 0, world: int = 1) -> torch.Tensor:
    """(sum of cross-entropies in nats, number of galaxies) over this worker's share of the
    batches, as a float64 tensor of shape (2,) on ``device`` (ready for an all-reduce).

    Every worker reads all validation batches and evaluates the galaxies with
    ``galaxy_id % world == rank``: summed over workers this covers each galaxy exactly once
    (Ray Train's own split would drop rows to give workers equal shares).
    """
    was_training = network.training
    network.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in batches:
        if world > 1:
            mine = torch.remainder(batch["galaxy_id"], world) == rank
            batch = {name: values[mine] for name, values in batch.items()}
        x, extra = network_inputs(batch, network.input_kind, n_inputs)
        logits = network(x.to(device), None if extra is None else extra.to(device))["logits"]
        bins = batch["bin"].to(device)
        sums[0] += F.cross_entropy(logits.float(), bins, reduction="sum").double()
        sums[1] += bins.shape[0]
    network.train(was_training)
    return sums


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def _save_state(directory: str, state: dict[str, Any]) -> None:
    torch.save(state, os.path.join(directory, STATE_FILE))


def load_state(directory: str) -> dict[str, Any]:
    """The training state saved in a checkpoint directory."""
    return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu",
                      weights_only=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one mass network on this worker's data shards (Ray Train entry point).

    ``config`` keys: ``network`` (build_network arguments), ``training`` (TrainingConfig as a
    dict), ``preprocessor`` and ``bins`` (stored in checkpoints), ``has_validation``,
    ``tracking_uri`` and ``mlflow_run_id`` (None: no MLflow), ``params`` (logged once),
    ``prior_entropy`` (nats), ``shuffle_buffer``, ``fail_at_step`` (tests: raise right after that
    step's checkpoint, as a crash would).
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    training = config["training"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    steps, batch_size = int(training["steps"]), int(training["batch_size"])
    per_worker = batch_size // world
    torch.set_num_threads(max(1, int(training["cpus_per_worker"])))
    torch.manual_seed(int(training["seed"]))
    device = ray.train.torch.get_device()
    use_amp = bool(training["use_gpu"] and training["mixed_precision"] and device.type == "cuda")

    network = build_network(**config["network"])
    bins = config["bins"]
    bin_width = (float(bins["high"]) - float(bins["low"])) / int(bins["n_bins"])
    smoothing_bins = float(training.get("label_smoothing_dex", 0.0)) / bin_width
    weights = None
    if network.training_kind == "scl":
        weights = LossWeights.for_input(network.input_kind, reconstruction=float(
            training[f"reconstruction_weight_{network.input_kind}"]),
            label_smoothing_bins=smoothing_bins)
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        network.load_state_dict(state["network"])
    objective = ray.train.torch.prepare_model(
        Objective(network, weights, smoothing_bins), parallel_strategy_kwargs={"find_unused_parameters": False})
    optimizer = torch.optim.Adam(objective.parameters(), lr=float(training["learning_rate"]),
                                 weight_decay=float(training["weight_decay"]))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    step, epoch = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        # A resumed run starts a fresh pass over the data (new shuffle) after the checkpoint.
        step, epoch = int(state["step"]), int(state["epoch"]) + 1
    resumed_from = step
    network = _unwrap(objective).network

    tracker = None
    if rank == 0 and config.get("tracking_uri") and config.get("mlflow_run_id"):
        from galpipe.train.tracking import RunLogger

        tracker = RunLogger(config["tracking_uri"], config["mlflow_run_id"])
        tracker.log_params(config.get("params", {}))
        tracker.log_metrics({"prior_entropy": config["prior_entropy"]}, step=step)
    log.info("worker %d/%d: %s training from step %d of %d", rank, world,
             network.training_kind, step, steps)

    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = (ray.train.get_dataset_shard("validation")
                        if config.get("has_validation") else None)
    n_inputs = network.n_inputs
    augment_twice = network.training_kind == "scl" and network.input_kind == "image"
    generator = torch.Generator(device="cpu")
    window: dict[str, torch.Tensor] = {}
    n_window = 0
    train_time, data_wait, train_cpu, trained_steps = 0.0, 0.0, 0.0, 0
    previous = state["metrics"] if state is not None else {}
    last_losses = {"loss": float(previous.get("train_loss", float("nan")))}
    validation_ce = float(previous.get("validation_cross_entropy", float("nan")))
    last_checkpoint = -1

    def validate() -> float:
        if validation_shard is None:
            return float("nan")
        sums = _all_reduce(validation_sums(
            network, validation_shard.iter_torch_batches(
                batch_size=int(config.get("validation_batch_size", 256)), device=device),
            n_inputs, device, rank, world))
        return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")

    def metrics_now() -> dict[str, float]:
        rate = (trained_steps - 1) * batch_size / train_time if train_time > 0 else float("nan")
        return {"step": step, "epoch": epoch, "validation_cross_entropy": validation_ce,
                "train_loss": last_losses.get("loss", float("nan")),
                "galaxies_per_second": rate, "train_loop_seconds": train_time,
                "data_wait_seconds": data_wait, "train_cpu_seconds": train_cpu,
                "cuda": float(device.type == "cuda"),
                "mixed_precision": float(use_amp),
                "resumed_from_step": resumed_from,
                "worker_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def report(with_checkpoint: bool) -> None:
        metrics = metrics_now()
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                _save_state(directory, {
                    "network": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
                    "seed": int(training["seed"]), "torch_rng": torch.get_rng_state(),
                    "preprocessor": config["preprocessor"], "bins": config["bins"],
                    "network_arguments": config["network"], "metrics": metrics,
                })
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory)
                             if rank == 0 else None,
                             checkpoint_dir_name=f"checkpoint-{step:08d}")

    while step < steps:
        batches_this_epoch = 0
        shuffle_seed = int(training["seed"]) * 100_003 + epoch
        tick, cpu_tick = time.perf_counter(), time.process_time()
        for batch in train_shard.iter_torch_batches(
                batch_size=per_worker, drop_last=True, device=device,
                local_shuffle_buffer_size=config.get("shuffle_buffer") or None,
                local_shuffle_seed=shuffle_seed):
            waited = time.perf_counter() - tick
            step += 1
            batches_this_epoch += 1
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, float(training["learning_rate"]),
                                            float(training["lr_drop_at"]),
                                            float(training["lr_drop_factor"]))
            x, extra = network_inputs(batch, network.input_kind, n_inputs)
            x_aug = None
            if augment_twice:
                # A second view of each galaxy under a different symmetry of the square.
                generator.manual_seed(int(training["seed"]) * 1_000_003 + step * 1009 + rank)
                codes = torch.randint(1, 8, (x.shape[0],), generator=generator)
                x_aug = dihedral(x, codes.to(x.device))
            terms = train_step(objective, optimizer, scaler, x, extra, batch["bin"], x_aug,
                               torch.float16 if use_amp else None)
            for name, value in terms.items():
                # Summed as tensors: converting every step would synchronise a GPU each step.
                window[name] = value if name not in window else window[name] + value
            n_window += 1
            trained_steps += 1
            if trained_steps > 1:
                # The first step also waits for the pipeline to start: throughput is measured
                # on the steps after it.
                train_time += time.perf_counter() - tick
                train_cpu += time.process_time() - cpu_tick
                data_wait += waited

            if step % int(training["log_every"]) == 0 or step == steps:
                last_losses = {name: float(total) / n_window for name, total in window.items()}
                window, n_window = {}, 0
                if tracker is not None:
                    tracker.log_metrics({f"train_{k}": v for k, v in last_losses.items()} | {
                        "learning_rate": optimizer.param_groups[0]["lr"]}, step=step)
                log.debug("step %d/%d loss %.4f", step, steps, last_losses["loss"])
            validating = step % int(training["validate_every"]) == 0 or step == steps
            if validating:
                validation_ce = validate()
                if tracker is not None:
                    tracker.log_metrics({"validation_cross_entropy": validation_ce}, step=step)
            checkpointing = step % int(training["checkpoint_every"]) == 0 or step == steps
            if checkpointing:
                report(with_checkpoint=True)
                last_checkpoint = step
            elif validating:
                report(with_checkpoint=False)
            if config.get("fail_at_step") is not None and step == int(config["fail_at_step"]):
                raise RuntimeError(f"simulated crash after step {step} (fail_at_step)")
            if step >= steps:
                break
            tick, cpu_tick = time.perf_counter(), time.process_time()
        if batches_this_epoch == 0:
            raise ValueError(f"worker {rank}: the training shard holds fewer than {per_worker} "
                             "galaxies, so no full batch can be formed; lower batch_size or "
                             "num_workers")
        if step < steps:
            epoch += 1

    if last_checkpoint != step:
        # Resumed from the final checkpoint: report it again so that this run ends with it.
        if math.isnan(validation_ce):
            validation_ce = validate()
        report(with_checkpoint=True)


__all__ = ["Objective", "STATE_FILE", "learning_rate", "load_state", "train_loop_per_worker",
           "train_step", "validation_sums"]

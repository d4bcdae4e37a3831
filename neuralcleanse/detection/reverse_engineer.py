"""Trigger reverse-engineering for many labels at once.

Every public implementation optimises one label after another. Here a block of K labels is
optimised together: one forward and backward pass over K×B images (each label's trigger
stamped on the same B clean images). The loss is a sum of per-label losses and Adam is
element-wise, so each label's update is exactly what it would be alone; the per-label cost
schedule, early stop and best-mask tracking are tensors, so no Python loop over labels runs
in the hot path. Labels that finish leave the block and queued ones take their place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neuralcleanse.data.trigger import apply_trigger
from neuralcleanse.detection.config import ReverseConfig
from neuralcleanse.detection.hardware import choose_block_size, prepare_model, to_preferred_layout

# The published code squashes with tanh(x) / (2 - eps) + 0.5 to keep values strictly inside (0,1).
_TANH_SCALE = 1.0 / (2.0 - 1e-7)
_ORIGINAL_LOSS_SCALE = -math.log(1e-7)

_PARAMS = ("mask_p", "pattern_p")
_ADAM = ("mask_m", "mask_v", "pattern_m", "pattern_v", "adam_t")
_SCHEDULE = (
    "cost", "cost_set_counter", "up_counter", "down_counter", "up_flag", "down_flag",
    "best_reg", "best_mask", "best_pattern", "es_counter", "es_reg_best", "steps", "done",
    "last_acc", "last_reg",
)
_STATE_KEYS = _PARAMS + _ADAM + _SCHEDULE
# Infinity is how these say "nothing found yet"; in every other tensor it means damage.
_MAY_BE_INF = ("best_reg", "es_reg_best", "last_reg")
PRECISIONS = ("fp32", "bf16")


def squash(p: torch.Tensor) -> torch.Tensor:
    return torch.tanh(p) * _TANH_SCALE + 0.5


def unsquash(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v - 0.5) * (2.0 - 1e-7))


@dataclass
class LabelState:
    """Where reverse-engineering of each label stands; indexable by label, saveable between runs."""

    tensors: dict[str, torch.Tensor]

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx].clone() for k, v in self.tensors.items()}

    def scatter(self, idx: torch.Tensor, block: dict[str, torch.Tensor]) -> None:
        for k, v in block.items():
            self.tensors[k][idx] = v.detach()


class TriggerReverseEngineer:
    """Optimises (mask, pattern) per label so that stamped clean images go to that label."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        config: ReverseConfig,
        *,
        device: str | torch.device = "cpu",
        block_size: int | None = None,
        seed: int = 0,
        sync_every: int | None = None,
        precision: str = "fp32",
    ) -> None:
        """`sync_every`: steps between the host's looks at which labels finished. Each look waits
        for the device, so on a GPU the engine runs several steps blind (finished labels are
        frozen, not stepped; their unused batches go back to their streams) and looks every 8
        steps. Finished labels still take part in the passes but their state is put back after
        each step. On a CPU looking is free and a finished label's place is refilled at once: 1.
        `precision`: "fp32", or "bf16" to run the model under autocast (its forward pass, and so
        the backward pass through it, in bf16; the trigger, loss and Adam stay in fp32). Off by default: it was 20× slower on the project's
        CPU and has not been measured on a GPU (docs/presets.md)."""
        check_precision(precision)
        self.precision = precision
        self.device = torch.device(device)
        # Built once: entering a fresh autocast per batch re-checks the device's bf16 support.
        self._autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.model = prepare_model(model, self.device, probe=x[:2])
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.num_classes = num_classes
        self.config = config
        self.block_size = block_size or choose_block_size(self.model, tuple(x.shape[1:]), config.batch_size,
                                                         num_classes, self.device)
        self.seed = seed
        self.sync_every = max(1, sync_every or (8 if self.device.type == "cuda" else 1))
        self._label_gens: dict[int, torch.Generator] = {}
        self._label_buffers: dict[int, torch.Tensor] = {}
        # Each label's batch stream as it stood when its state was last written back: saved with
        # the state, so a resumed label draws the very batches it would have drawn.
        self._stream_at_scatter: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.passes = 0
        self.state = self._init_state(seed)

    # ---- state -------------------------------------------------------------------------
    def _init_state(self, seed: int) -> LabelState:
        c, h, w = self.x.shape[1:]
        n = self.num_classes
        gen = torch.Generator().manual_seed(seed + 1)
        # Random start in (0,1), as the published code does (mask and pattern uniform).
        mask0 = torch.rand(n, 1, h, w, generator=gen).clamp(1e-3, 1 - 1e-3)
        pattern0 = torch.rand(n, c, h, w, generator=gen).clamp(1e-3, 1 - 1e-3)
        cfg = self.config
        zeros = lambda *s, dtype=torch.float32: torch.zeros(*s, dtype=dtype)  # noqa: E731
        t = {
            "mask_p": unsquash(mask0), "pattern_p": unsquash(pattern0),
            "mask_m": zeros(n, 1, h, w), "mask_v": zeros(n, 1, h, w),
            "pattern_m": zeros(n, c, h, w), "pattern_v": zeros(n, c, h, w),
            "adam_t": zeros(n),
            "cost": torch.full((n,), float(cfg.start_cost)),
            "cost_set_counter": zeros(n, dtype=torch.long), "up_counter": zeros(n, dtype=torch.long),
            "down_counter": zeros(n, dtype=torch.long),
            "up_flag": zeros(n, dtype=torch.bool), "down_flag": zeros(n, dtype=torch.bool),
            "best_reg": torch.full((n,), math.inf), "best_mask": mask0.clone(), "best_pattern": pattern0.clone(),
            "es_counter": zeros(n, dtype=torch.long), "es_reg_best": torch.full((n,), math.inf),
            "steps": zeros(n, dtype=torch.long), "done": zeros(n, dtype=torch.bool),
            "last_acc": zeros(n), "last_reg": torch.full((n,), math.inf),
        }
        return LabelState({k: v.to(self.device) for k, v in t.items()})

    # ---- main loop ---------------------------------------------------------------------
    def run(
        self,
        labels: Iterable[int],
        step_limit: int | None = None,
        on_label_done: Callable[[int], None] | None = None,
    ) -> None:
        """Advances each label until it stops early, reaches max_steps or `step_limit` steps.

        `step_limit` counts a label's steps since its start, so calling again with a higher
        limit continues where the last call left off (the budget scheduler relies on this).
        """
        limit = self.config.max_steps if step_limit is None else min(step_limit, self.config.max_steps)
        steps = self.state.tensors["steps"].cpu()
        done = self.state.tensors["done"].cpu()
        queue = [int(l) for l in labels if not bool(done[l]) and int(steps[l]) < limit]
        active: list[int] = []
        block: dict[str, torch.Tensor] | None = None
        while queue or active:
            if queue and len(active) < self.block_size:
                take = queue[: self.block_size - len(active)]
                queue = queue[len(take):]
                fresh = self.state.gather(torch.tensor(take, device=self.device))
                block = fresh if block is None else {k: torch.cat([block[k], fresh[k]]) for k in block}
                active += take
            label_t = torch.tensor(active, device=self.device)
            window = self.sync_every
            nb = self.config.batches_per_step
            drawn = self._batches(active, window * nb).contiguous()
            batches = drawn.to(self.device)
            steps_before = block["steps"].clone()
            for w in range(window):
                self._step(block, label_t, batches[w * nb:(w + 1) * nb], limit if window > 1 else None)
            # The one wait for the device per window: what finished and how many steps each took.
            finished_t = block["done"] | (block["steps"] >= limit)
            looked = torch.stack([finished_t.long(), block["steps"] - steps_before]).cpu()
            finished, taken = looked[0].bool(), looked[1]
            if window > 1:
                self._give_back(active, drawn, taken)
            if bool(finished.any()):
                fin_idx = torch.nonzero(finished).flatten()
                keep_idx = torch.nonzero(~finished).flatten()
                done_labels = [active[i] for i in fin_idx.tolist()]
                fin_dev, keep_dev = fin_idx.to(self.device), keep_idx.to(self.device)
                self.state.scatter(torch.tensor(done_labels, device=self.device),
                                   {k: v[fin_dev] for k, v in block.items()})
                for lab in done_labels:
                    self._remember_stream(lab)
                block = {k: v[keep_dev] for k, v in block.items()}
                active = [active[i] for i in keep_idx.tolist()]
                if on_label_done is not None:
                    for lab in done_labels:
                        on_label_done(lab)
        return None

    def _batches(self, labels: Sequence[int], count: int) -> torch.Tensor:
        """(count, K, B) sample indices, on the host: each label draws its own shuffles from its own stream.

        A label's batches then depend only on (seed, label), never on which labels share its
        block, so results do not change with the block size the memory allows.
        """
        n = self.x.shape[0]
        need = count * self.config.batch_size
        rows = []
        for label in labels:
            gen = self._label_gens.get(label)
            if gen is None:
                gen = self._label_gens[label] = torch.Generator().manual_seed(self.seed * 1_000_003 + label)
            buf = self._label_buffers.get(label, torch.empty(0, dtype=torch.long))
            while buf.numel() < need:  # epochs over the pool, as a shuffled generator would give
                buf = torch.cat([buf, torch.randperm(n, generator=gen)])
            rows.append(buf[:need])
            self._label_buffers[label] = buf[need:]
        return torch.stack(rows).view(len(rows), count, self.config.batch_size).transpose(0, 1)

    def _give_back(self, labels: Sequence[int], drawn: torch.Tensor, steps_taken: torch.Tensor) -> None:
        """Returns the batches a label drew for a window but did not use (it finished inside the
        window) to the front of its stream, so its stream stands where one-step windows leave it."""
        per_step = self.config.batches_per_step * self.config.batch_size
        for i, label in enumerate(labels):
            unused = drawn[:, i].reshape(-1)[int(steps_taken[i]) * per_step:]
            if unused.numel():
                self._label_buffers[label] = torch.cat([unused, self._label_buffers[label]])

    def _step(self, s: dict[str, torch.Tensor], labels: torch.Tensor, batches: torch.Tensor,
              freeze_at: int | None = None) -> None:
        """One step (a pass over samples_per_step samples) for every label in the block.

        `freeze_at`: labels done, or at this step count, keep their state (windows of several
        steps run finished labels along until the host looks)."""
        cfg = self.config
        k = labels.shape[0]
        nb = cfg.batches_per_step
        if freeze_at is not None:
            with torch.no_grad():
                live = ~(s["done"] | (s["steps"] >= freeze_at))
                before = {key: v.clone() for key, v in s.items()}
        acc_sum = torch.zeros(k, device=self.device)
        reg_sum = torch.zeros(k, device=self.device)
        b1, b2 = cfg.betas
        bsz = cfg.batch_size
        for idx in batches:
            xb, yb = self.x[idx], self.y[idx]  # (K,B,C,H,W), (K,B)
            mask_p = s["mask_p"].requires_grad_(True)
            pattern_p = s["pattern_p"].requires_grad_(True)
            mask, pattern = squash(mask_p), squash(pattern_p)
            stamped = apply_trigger(xb, mask[:, None], pattern[:, None])
            with self._autocast:
                logits = self.model(to_preferred_layout(stamped.flatten(0, 1), self.model))
            logits = logits.float().view(k, bsz, -1)
            if cfg.exclude_target_samples:
                weight = (yb != labels[:, None]).float()
            else:
                weight = torch.ones(k, bsz, device=self.device)
            denom = weight.sum(1).clamp(min=1.0)
            if cfg.loss == "original":
                p_target = torch.softmax(logits, -1).gather(2, labels.view(k, 1, 1).expand(k, bsz, 1))[..., 0]
                per_sample = _ORIGINAL_LOSS_SCALE * (1.0 - p_target)
            else:
                per_sample = F.cross_entropy(
                    logits.flatten(0, 1), labels.repeat_interleave(bsz), reduction="none"
                ).view(k, -1)
            ce = (per_sample * weight).sum(1) / denom
            reg = mask_penalty(mask, cfg.smoothness)
            loss = (ce + s["cost"] * reg).sum()
            g_mask, g_pattern = torch.autograd.grad(loss, (mask_p, pattern_p))
            with torch.no_grad():
                hits = (logits.argmax(-1) == labels[:, None]).float()
                acc_sum += (hits * weight).sum(1) / denom
                reg_sum += reg
                s["adam_t"] += 1
                s["mask_p"] = _adam(mask_p.detach(), g_mask, s["mask_m"], s["mask_v"], s["adam_t"], cfg.lr, b1, b2)
                s["pattern_p"] = _adam(pattern_p.detach(), g_pattern, s["pattern_m"], s["pattern_v"], s["adam_t"],
                                       cfg.lr, b1, b2)
        self.passes += nb * k * cfg.batch_size
        with torch.no_grad():
            self._end_of_step(s, acc_sum / nb, reg_sum / nb)
            if freeze_at is not None:
                for key, v in s.items():
                    s[key] = torch.where(live.view((-1,) + (1,) * (v.ndim - 1)), v, before[key])

    def _end_of_step(self, s: dict[str, torch.Tensor], acc: torch.Tensor, reg: torch.Tensor) -> None:
        """The published cost schedule and early stop, for all labels of the block at once."""
        cfg = self.config
        s["last_acc"], s["last_reg"] = acc, reg
        improved = (acc >= cfg.attack_threshold) & (reg < s["best_reg"])
        s["best_reg"] = torch.where(improved, reg, s["best_reg"])
        s["best_mask"] = torch.where(improved[:, None, None, None], squash(s["mask_p"]), s["best_mask"])
        s["best_pattern"] = torch.where(improved[:, None, None, None], squash(s["pattern_p"]), s["best_pattern"])

        found = torch.isfinite(s["best_reg"])
        stalled = s["best_reg"] >= cfg.early_stop_threshold * s["es_reg_best"]
        s["es_counter"] = torch.where(found, torch.where(stalled, s["es_counter"] + 1, 0), s["es_counter"])
        s["es_reg_best"] = torch.minimum(s["es_reg_best"], s["best_reg"])
        stop = s["up_flag"] & s["down_flag"] & (s["es_counter"] >= cfg.early_stop_patience)

        success = acc >= cfg.attack_threshold
        setting = (s["cost"] == 0) & success
        s["cost_set_counter"] = torch.where(setting, s["cost_set_counter"] + 1, 0)
        reset = setting & (s["cost_set_counter"] >= cfg.patience)
        s["cost"] = torch.where(reset, torch.full_like(s["cost"], cfg.init_cost), s["cost"])
        for key in ("up_counter", "down_counter"):
            s[key] = torch.where(reset, 0, s[key])
        for key in ("up_flag", "down_flag"):
            s[key] = s[key] & ~reset
        s["up_counter"] = torch.where(success, s["up_counter"] + 1, 0)
        s["down_counter"] = torch.where(success, 0, s["down_counter"] + 1)
        go_up = s["up_counter"] >= cfg.patience
        go_down = ~go_up & (s["down_counter"] >= cfg.patience)
        s["up_counter"] = torch.where(go_up, 0, s["up_counter"])
        s["down_counter"] = torch.where(go_down, 0, s["down_counter"])
        s["cost"] = torch.where(go_up, s["cost"] * cfg.cost_multiplier_up,
                                torch.where(go_down, s["cost"] / cfg.cost_multiplier_down, s["cost"]))
        s["up_flag"] = s["up_flag"] | go_up
        s["down_flag"] = s["down_flag"] | go_down
        s["steps"] = s["steps"] + 1
        s["done"] = s["done"] | stop | (s["steps"] >= cfg.max_steps)

    # ---- saving and resuming --------------------------------------------------------------
    def _remember_stream(self, label: int) -> None:
        gen = self._label_gens.get(label)
        if gen is not None:
            self._stream_at_scatter[label] = (gen.get_state(), self._label_buffers[label].clone())

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to go on later: per-label state as last written back (finished labels
        exactly; labels in flight as they were before their block started) and their streams."""
        return {"state": {k: v.cpu() for k, v in self.state.tensors.items()},
                "streams": {int(k): v for k, v in self._stream_at_scatter.items()},
                "passes": self.passes, "block_size": self.block_size}

    def restore(self, snap: dict[str, Any]) -> None:
        """Takes back a `snapshot()`. The file it came from may have been damaged or edited, so
        every tensor's type, shape and range is checked first: ValueError says what is wrong."""
        state = snap.get("state") if isinstance(snap, dict) else None
        fresh = self.state.tensors
        if not isinstance(state, dict) or set(state) != set(fresh):
            raise ValueError("the saved state does not fit this model and configuration")
        for k, v in state.items():
            if not isinstance(v, torch.Tensor) or v.shape != fresh[k].shape or v.dtype != fresh[k].dtype:
                raise ValueError(f"the saved state's {k!r} does not fit this model and configuration")
            if v.is_floating_point() and (bool(torch.isnan(v).any()) or (k not in _MAY_BE_INF
                                                                      and not bool(torch.isfinite(v).all()))):
                raise ValueError(f"the saved state's {k!r} holds NaN or infinite values")
        for k in ("best_mask", "best_pattern"):
            if bool((state[k] < 0).any() or (state[k] > 1).any()):
                raise ValueError(f"the saved state's {k!r} lies outside [0, 1]")
        if bool((state["steps"] < 0).any() or (state["cost"] < 0).any()):
            raise ValueError("the saved state holds negative step counts or costs")
        streams = snap.get("streams", {})
        n = self.x.shape[0]
        if not isinstance(streams, dict):
            raise ValueError("the saved state's batch streams are damaged")
        gens, buffers, at_scatter = {}, {}, {}
        for label, entry in streams.items():
            ok = (isinstance(label, int) and 0 <= label < self.num_classes and isinstance(entry, (tuple, list))
                  and len(entry) == 2 and all(isinstance(t, torch.Tensor) for t in entry)
                  and entry[1].dtype == torch.long and entry[1].ndim == 1
                  and bool(((entry[1] >= 0) & (entry[1] < n)).all()))
            if not ok:
                raise ValueError(f"the saved state's batch stream of label {str(label)[:20]} is damaged")
            gen = torch.Generator()
            try:
                gen.set_state(entry[0])
            except (RuntimeError, TypeError):
                raise ValueError(f"the saved state's random stream of label {label} is damaged") from None
            gens[label], buffers[label] = gen, entry[1].clone()
            at_scatter[label] = (entry[0], entry[1].clone())
        passes = snap.get("passes", 0)
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 0:
            raise ValueError("the saved state's pass count is damaged")
        self.state = LabelState({k: v.to(self.device) for k, v in state.items()})
        self._label_gens, self._label_buffers, self._stream_at_scatter = gens, buffers, at_scatter
        self.passes = passes

    def label_record(self, label: int) -> dict[str, Any]:
        """One label's state as last written back, with its batch stream: what the scan's journal
        appends when the label finishes."""
        return {"label": int(label), "state": {k: v[label].detach().cpu().clone() for k, v in self.state.tensors.items()},
                "stream": self._stream_at_scatter.get(int(label)), "passes": self.passes}

    def restore_labels(self, records: Sequence[dict[str, Any]]) -> None:
        """Takes back `label_record()`s (later ones win) over this engine's fresh state; checked
        like `restore`, and ValueError says what is wrong."""
        fresh = self.snapshot()
        state = {k: v.clone() for k, v in fresh["state"].items()}
        streams, passes = dict(fresh["streams"]), fresh["passes"]
        for record in records:
            label, tensors = record.get("label"), record.get("state")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < self.num_classes:
                raise ValueError(f"a saved label record names label {str(label)[:20]}, not one of this model's")
            if not isinstance(tensors, dict) or set(tensors) != set(state):
                raise ValueError(f"the saved record of label {label} does not fit this model and configuration")
            for k, v in tensors.items():
                if not isinstance(v, torch.Tensor) or v.shape != state[k][label].shape or v.dtype != state[k].dtype:
                    raise ValueError(f"the saved record of label {label} has a {k!r} that does not fit")
                state[k][label] = v
            if record.get("stream") is not None:
                streams[label] = record["stream"]
            passes = record.get("passes", passes)
            if not isinstance(passes, int) or isinstance(passes, bool) or passes < 0:
                raise ValueError(f"the saved record of label {label} has a damaged pass count")
        self.restore({"state": state, "streams": streams, "passes": passes})

    # ---- results -----------------------------------------------------------------------
    def results(self) -> dict[str, torch.Tensor]:
        """Best mask and pattern per label (the last ones where the threshold was never reached)."""
        t = self.state.tensors
        found = torch.isfinite(t["best_reg"])
        mask = torch.where(found[:, None, None, None], t["best_mask"], squash(t["mask_p"]))
        pattern = torch.where(found[:, None, None, None], t["best_pattern"], squash(t["pattern_p"]))
        return {
            "mask": mask[:, 0].detach().cpu(),
            "pattern": pattern.detach().cpu(),
            "l1": mask.sum((1, 2, 3)).detach().cpu(),
            "reached": found.cpu(),
            "steps": t["steps"].cpu(),
            "cost": t["cost"].cpu(),
        }


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Per mask of a (K, 1, H, W) stack: summed absolute differences of vertical and horizontal neighbours."""
    return ((mask[..., 1:, :] - mask[..., :-1, :]).abs().sum((1, 2, 3))
            + (mask[..., :, 1:] - mask[..., :, :-1]).abs().sum((1, 2, 3)))


def mask_penalty(mask: torch.Tensor, smoothness: float = 0.0) -> torch.Tensor:
    """The size term the cost multiplies: |m|₁, plus `smoothness`·TV(m) when asked."""
    reg = mask.sum((1, 2, 3))
    return reg + smoothness * total_variation(mask) if smoothness else reg


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")


def _adam(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
          lr: float, b1: float, b2: float, eps: float = 1e-7) -> torch.Tensor:
    """Adam with a step count per label (labels join the block at different times)."""
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    shape = (-1,) + (1,) * (p.ndim - 1)
    bias1 = (1 - b1 ** t).view(shape)
    bias2 = (1 - b2 ** t).view(shape)
    return p - lr * (m / bias1) / ((v / bias2).sqrt() + eps)

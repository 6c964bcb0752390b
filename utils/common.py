"""
Plumbing shared by every script, written once: flags a run would ignore refused, distributed setup from torchrun's
environment, hand-written mixed precision, atomic checkpoints that carry every RNG state and the exact resume of a
training run (resume_run), EMA, a resumable data loader, image grids, video files (MP4, GIF and PNG previews) and the
run log. The command line is cli.py's, read before torch is imported; run folders and their locks are rundir.py's.
Nothing here knows about a particular model or loss.
"""
import os
import sys
import json
import time
import errno
import shutil
import random
import hashlib
import weakref
import threading
import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader

from utils.cli import die
from utils.rundir import no_space_is_an_error, partial_path

# -----------------------------------------------------------------------------
# user errors

def refuse_unused(argv, rules):
    """A flag given on the command line (argv) that this run would not read is an error, not a silent no-op. rules:
    [(flag, whether this run reads it, when it applies)]."""
    given = {a.split('=', 1)[0] for a in argv if a.startswith('--')}
    for flag, applies, when in rules:
        if flag in given and not applies:
            die(f"{flag} {when}, and this run would ignore it; drop it.")


def _nbytes(obj):
    """Bytes of the tensors and arrays in a (nested) checkpoint object: about the size of its file."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def non_finite(obj, where=''):
    """The places ('a.b[2]') of every NaN or infinite float in a (nested) result: a metric that is not a number is
    an error for the script to report, never a value in its JSON."""
    if isinstance(obj, float):
        return [] if np.isfinite(obj) else [where or 'the value']
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{where}[{i}]")]
    return []


def weights_hash(module):
    """A short fingerprint of a model's weights (names, shapes, dtypes and values): equal hashes mean the same model."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()[:16]

# -----------------------------------------------------------------------------
# resuming a run

def truncate_log(path, step):
    """Drop log rows after `step`: a resumed run redoes the steps between its checkpoint and the kill, and a plot of
    the log must show each step once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)['step'] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by the kill
    if len(keep) != len(lines):
        tmp = partial_path(path)
        with open(tmp, 'w') as f:
            f.writelines(keep)
        os.replace(tmp, path)


# --resume: the flags that change how a run is watched or where it runs but not its numbers (never compared), and those
# that change its data stream (a change refused unless --allow_changes); each training script adds its own to both
RESUME_UNSAVED = ('resume', 'overwrite', 'allow_changes', 'max_steps', 'log_interval', 'eval_interval', 'ckpt_interval',
                  'num_workers', 'device', 'compile', 'out_dir')
RESUME_EXACT = ('data', 'num_images', 'image_size', 'random_crop', 'batch_size', 'seed', 'num_frames', 'frame_stride')


def compare_resume_config(saved, current, allow_changes, exact=(), unsaved=()):
    """Print every setting of `current` (a dict of flags) that differs from the resumed run's `saved` one, but those of
    RESUME_UNSAVED + unsaved. A change of a RESUME_EXACT + exact setting (one that changes the data stream or the
    model) means the run cannot continue as an uninterrupted one would: refuse it unless the user passed
    --allow_changes."""
    skip = RESUME_UNSAVED + tuple(unsaved)
    changed = {k: (saved[k], v) for k, v in current.items() if k in saved and k not in skip and saved[k] != v}
    if changed:
        print("resuming with changed settings: " + ', '.join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    breaking = [k for k in changed if k in RESUME_EXACT + tuple(exact)]
    if breaking and not allow_changes:
        die(f"--resume cannot continue the run exactly with another data stream ("
            f"{', '.join(f'{k} {changed[k][0]} -> {changed[k][1]}' for k in breaking)}); pass the saved values, or "
            f"--allow_changes to continue from the checkpoint anyway.")
    return changed


def check_resume_steps(ckpt, ckpt_path, max_steps):
    """A run is resumed to train on: its checkpoint must be short of --max_steps."""
    if ckpt['step'] >= max_steps:
        die(f"{ckpt_path} is already at step {ckpt['step']}, and --max_steps is {max_steps}; raise --max_steps to "
            f"train on.")


def resume_run(ckpt, run_config, allow_changes, dist, out_dir, states, lrs=None, exact=(), unsaved=()):
    """Continue the run saved in `ckpt`, exactly where it stopped: its settings are compared with run_config
    (compare_resume_config), every object of `states` ({checkpoint key: module, optimizer, GradScaler or Loader; None
    for one the run does not have}) loads its saved state, each optimizer of `lrs` ({key: learning rate}) takes the
    command line's rate (so a resume can change it), this rank's RNG state is restored, and the log rows after the
    checkpoint are dropped (the run redoes those steps). -> the step to continue from."""
    compare_resume_config(ckpt['config'], run_config, allow_changes, exact, unsaved)
    for key, obj in states.items():
        if obj is not None:
            try:
                obj.load_state_dict(ckpt[key])
            except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
                die(f"the {key!r} state in {os.path.join(out_dir, 'ckpt.pt')} does not fit this run "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); resume with the flags it was trained with.")
    if not all_finite(state_tensors(*states.values())):
        die(f"{os.path.join(out_dir, 'ckpt.pt')} holds weights or optimizer state that are not finite (NaN or inf): "
            f"its run diverged, so it cannot be resumed; start again (with a lower --lr) or resume an earlier run.")
    for key, lr in (lrs or {}).items():
        for group in states[key].param_groups:
            group['lr'] = lr
    try:
        restore_rng_states(ckpt['rng'], dist)
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        die(f"the RNG states in {os.path.join(out_dir, 'ckpt.pt')} are not ones this project writes ({e}); the run "
            f"cannot continue exactly from it.")
    if dist.master:
        truncate_log(os.path.join(out_dir, 'log.jsonl'), ckpt['step'])
    return ckpt['step']

# -----------------------------------------------------------------------------
# distributed and precision

@dataclass
class Dist:
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    master: bool


def select_device(name):
    """--device, whose form cli.device checked while parsing, resolved now that torch is here: 'auto' is the GPU when
    there is one, and a GPU asked for must be visible."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        die(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu.")
    return name


def setup_distributed(device='auto'):
    """DDP is on when torchrun set RANK; NCCL on GPUs, gloo on CPU. Each process uses the GPU of its local rank."""
    device = select_device(device)
    ddp = int(os.environ.get('RANK', -1)) != -1
    rank, local_rank, world_size = 0, 0, 1
    if ddp:
        rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'  # local, not global, rank: correct on every node of a multi-node run
            torch.cuda.set_device(device)
            torch_dist.init_process_group(backend='nccl', device_id=torch.device(device))
        else:
            torch_dist.init_process_group(backend='gloo')
    device = torch.device(device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN time its conv algorithms once
    return Dist(ddp, rank, local_rank, world_size, device, rank == 0)


def cleanup_distributed():
    if torch_dist.is_available() and torch_dist.is_initialized():
        # every rank arrives before any tears its connections down: a rank that left first made a peer's gloo thread
        # abort at exit ("terminate called without an active exception"), once in a CI run of the 2-process test
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def resolve_dtype(dtype, device):
    if dtype == 'auto':
        return 'bfloat16' if device.type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
    if dtype == 'float16' and device.type != 'cuda':
        die("--dtype float16 needs a CUDA GPU (use float32 or bfloat16 on CPU).")
    return dtype


def autocast(device, dtype):
    """Mixed precision by hand: autocast for bf16/fp16, nothing for fp32 (fp16 also needs the GradScaler)."""
    if dtype == 'float32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def broadcast_latent_norm(value, ndim, device):
    """train_ldm.py's latent shift or scale as saved, one float (images) or one per channel (video), -> a float or a
    (C, 1, 1[, 1]) tensor that broadcasts over latents (B, C, [T,] h, w) of `ndim` dimensions."""
    if isinstance(value, (int, float)):
        return value
    return torch.tensor(value, dtype=torch.float32, device=device).view(-1, *[1] * (ndim - 2))


def make_grad_scaler(dtype, device):
    """Loss scaling only matters for fp16; for bf16/fp32 the scaler is a pass-through."""
    return torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))


def all_reduce_mean(x, dist):
    """Mean of a scalar tensor over ranks (for logging only)."""
    if dist.ddp:
        x = x.detach().clone()
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.AVG if dist.device.type == 'cuda' else torch_dist.ReduceOp.SUM)
        if dist.device.type != 'cuda':  # gloo has no AVG
            x /= dist.world_size
    return x


def note_non_finite(first_bad_step, loss, step):
    """first_bad_step: a float64 tensor on the loss's device, inf while every loss was finite, else the first step whose
    loss was not. Updated on the device, so checking every step costs no host sync."""
    return torch.where(torch.isfinite(loss) | torch.isfinite(first_bad_step), first_bad_step,
                       torch.full_like(first_bad_step, step))


def stop_if_non_finite(first_bad_step, ckpt_path, dist, progress=None, saved_step=None):
    """One host sync, before every checkpoint and log line: a NaN/inf loss since the last check ends the run before
    anything is written, so the last checkpoint (of saved_step) stays good. The minimum over ranks, so every rank stops
    together."""
    if dist.ddp:
        first_bad_step = first_bad_step.clone()
        torch_dist.all_reduce(first_bad_step, op=torch_dist.ReduceOp.MIN)
    if torch.isfinite(first_bad_step):
        _stop(f"the loss became non-finite at step {int(first_bad_step)}", ckpt_path, saved_step, dist, progress)


def state_tensors(*objects):
    """The tensors of modules (parameters and buffers) and optimizers (their per-parameter state: Adam's moments)."""
    out = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            out += [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            out += [v for state in obj.state.values() for v in state.values() if torch.is_tensor(v)]
    return out


@torch.no_grad()
def all_finite(tensors):
    """Whether no float tensor of `tensors` holds a NaN or inf: torch.isfinite of each, the flags stacked on their
    device and read with one host sync. Cheaper than one isfinite over all of them laid end to end, whose copy took
    4.6 s against 2.1 s for 136M floats (DiT-B/2 with Adam's moments) on one busy CPU thread."""
    flags = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(f).all()) for f in flags.values())


def stop_if_weights_non_finite(objects, step, ckpt_path, saved_step, dist, progress=None):
    """Before every checkpoint (and so at the end of a run): weights or optimizer state that are not finite after the
    update of `step` end the run before they are saved, so the checkpoint on disk (of saved_step) stays a finite one.
    A loss computed before the update cannot see this: lr 1e10 makes the weights infinite in the step's own update."""
    finite = torch.tensor(float(all_finite(state_tensors(*objects))), device=dist.device)
    if dist.ddp:
        torch_dist.all_reduce(finite, op=torch_dist.ReduceOp.MIN)
    if not finite.item():
        _stop(f"the weights or the optimizer state became non-finite (NaN or inf) at step {step}", ckpt_path,
              saved_step, dist, progress)


def _stop(what, ckpt_path, saved_step, dist, progress):
    if progress is not None:
        progress.close()
    for writer in list(WRITERS):  # the last checkpoint may still be on its way to disk: the sentence below names it
        writer.wait()
    cleanup_distributed()
    if saved_step is not None:
        die(f"{what}; nothing was saved after it, so {ckpt_path} holds the last checkpoint before it (step "
            f"{saved_step}, finite and untouched; lower --lr, or try --dtype float32, then --resume).")
    die(f"{what}, before any checkpoint was written, so there is nothing to resume (lower --lr, or try --dtype "
        f"float32, and start again).")


def rank_checksum_diff(model, dist):
    """The largest difference between any rank's parameter checksums and rank 0's: DDP must keep it 0; check, not
    trust. Per parameter tensor the float64 sum and sum of squares, so only 16 bytes per tensor cross the network
    (an all-gather of the weights themselves would be 24 GB for DiT-XL/2 on 8 GPUs)."""
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                        for p in model.parameters()])  # (n_tensors, 2)
    gathered = [torch.empty_like(sums) for _ in range(dist.world_size)]
    torch_dist.all_gather(gathered, sums)
    return max((g - gathered[0]).abs().max().item() for g in gathered)


# -----------------------------------------------------------------------------
# random state, checkpoints, EMA

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """Every RNG state of this process, as tensors, lists and numbers only: what a checkpoint read with
    torch.load(weights_only=True) may hold (numpy's key array becomes an int64 tensor)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    s = {'python': [version, list(internal), gauss_next],
         'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian],
         'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        s['cuda'] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s):
    version, internal, gauss_next = s['python']
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = s['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(s['torch'])
    if 'cuda' in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])


def gather_rng_states(dist):
    """Every rank's RNG state, gathered on all ranks (the checkpoint keeps one per rank so a resume is exact)."""
    state = rng_state()
    if not dist.ddp:
        return [state]
    states = [None] * dist.world_size
    torch_dist.all_gather_object(states, state)
    return states


def restore_rng_states(states, dist):
    """This rank's RNG state from a checkpoint's per-rank list; a different world size cannot be matched exactly."""
    if len(states) == dist.world_size:
        set_rng_state(states[dist.rank])
    elif dist.master:
        print(f"note: the checkpoint was written by {len(states)} processes and this run has {dist.world_size}; "
              f"the data order continues but random draws will not match an uninterrupted run.")


def save_checkpoint(obj, path):
    """Atomic write: a kill during the save leaves the previous checkpoint untouched, never a truncated file."""
    path = os.fspath(path)
    tmp = partial_path(path)
    try:
        with no_space_is_an_error(os.path.dirname(os.path.abspath(path)), _nbytes(obj)):
            with open(tmp, 'wb') as f:
                try:
                    torch.save(obj, f)
                except RuntimeError as e:  # torch's zip writer reports a full disk as 'unexpected pos', not ENOSPC
                    if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free >= _nbytes(obj):
                        raise
                    raise OSError(errno.ENOSPC, 'No space left on device') from e
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write leaves no debris
            os.remove(tmp)  # atomic on POSIX: readers see the old file or the new one
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def cpu_copy(obj, memo=None):
    """A snapshot of a (nested) state dict with every tensor copied to the CPU, so training may go on changing the
    originals while the snapshot is written. A tensor that appears twice (ckpt.pt and ema.pt share the EMA) is copied
    once."""
    memo = {} if memo is None else memo
    if torch.is_tensor(obj):
        if id(obj) not in memo:
            memo[id(obj)] = obj.detach().to('cpu', copy=True)
        return memo[id(obj)]
    if isinstance(obj, dict):
        return {k: cpu_copy(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v, memo) for v in obj)
    return obj


WRITERS = weakref.WeakSet()  # every CheckpointWriter of the process, for a stop that must wait for its last write


class CheckpointWriter:
    """
    Checkpoints written on a background thread: save() takes a CPU snapshot (seconds even for DiT-XL/2's 11 GB with
    AdamW) and returns while the files are written atomically (save_checkpoint), so the GPUs wait for the copy only,
    not for the disk. One write at a time; wait() before the next and at the end, and it reports a failed write.
    """
    def __init__(self):
        self.thread, self.error = None, None
        WRITERS.add(self)

    def save(self, files):
        """files: {path: object}."""
        self.wait()
        snapshot = cpu_copy(files)
        self.thread = threading.Thread(target=self._write, args=(snapshot,), daemon=False)
        self.thread.start()

    def _write(self, snapshot):
        try:
            for path, obj in snapshot.items():
                save_checkpoint(obj, path)
        except BaseException as e:  # reported on the training thread by wait()
            self.error = e

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, SystemExit):  # save_checkpoint's own sentence (a full disk)
                raise error
            die(f"writing a checkpoint failed ({type(error).__name__}: {error}); the previous one is intact.")


def ema_decay(decay, step, warmup=False):
    """The EMA decay at update `step` (0 for the first): `decay`, or with warmup min(decay, (1 + n) / (10 + n)) (the
    num_updates rule of TensorFlow's ExponentialMovingAverage), so that a short run's EMA is not mostly its initial
    weights: at decay 0.999 and no warm-up, 13.5% of the EMA is still the initialisation after 2000 steps."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema <- decay * ema + (1 - decay) * theta; buffers (e.g. BatchNorm statistics) are copied."""
    ema_params, params = list(ema_model.parameters()), [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)  # one fused kernel per group of tensors, not one per tensor
    for b_ema, b in zip(ema_model.buffers(), model.buffers()):
        b_ema.copy_(b)

# -----------------------------------------------------------------------------
# data loading with a resumable order

class Loader:
    """
    Endless batches from a map-style dataset in an order that depends only on (seed, epoch), so that a resumed run sees
    exactly the batches an uninterrupted run would have seen. Each rank takes every world_size-th batch slice of the
    epoch's permutation (DistributedSampler's rule). Infinite datasets (the embedded one) are read in index order,
    since every index is a fresh random image. Each item carries its own seed for augmentation (flip, crop), so the
    result does not depend on the number of workers. The state is the number of batches handed out, and the
    indices of the unreadable files met so far (each replaced by a readable neighbour, and counted once).
    """
    def __init__(self, dataset, batch_size, seed, dist, num_workers=2):
        self.dataset, self.batch_size, self.seed, self.dist = dataset, batch_size, seed, dist
        self.num_workers = num_workers
        self.infinite = getattr(dataset, 'infinite', False)
        n = len(dataset)
        self.batches_per_epoch = n // (batch_size * dist.world_size) if not self.infinite else None
        if not self.infinite and self.batches_per_epoch == 0:
            die(f"the dataset has {n} images, fewer than one global batch of {batch_size * dist.world_size}; "
                f"lower --batch_size or add images.")
        self.epoch, self.batch_in_epoch = 0, 0
        self.unreadable = set()  # indices of the unreadable files met so far (replaced by a neighbour, never a crash)
        self._it = None

    def state_dict(self):
        return {'epoch': self.epoch, 'batch_in_epoch': self.batch_in_epoch, 'unreadable': sorted(self.unreadable)}

    def load_state_dict(self, s):
        self.epoch, self.batch_in_epoch, self.unreadable = s['epoch'], s['batch_in_epoch'], set(s['unreadable'])
        self._it = None

    def skipped(self):
        """The unreadable files met so far, each once, on every rank (a collective under DDP: all ranks call it),
        plus those the dataset left out when it was made (latent_cache.LatentCache's unreadable_left_out)."""
        seen = self.unreadable
        if self.dist.ddp:
            every = [None] * self.dist.world_size
            torch_dist.all_gather_object(every, sorted(seen))
            seen = set().union(*map(set, every))
        return len(seen) + getattr(self.dataset, 'unreadable_left_out', 0)

    def _batches(self, epoch, start):
        """Lists of (index, item_seed) for this rank, from batch `start` of `epoch` on, without end."""
        B, W, r = self.batch_size, self.dist.world_size, self.dist.rank
        if self.infinite:
            b = start
            while True:
                first = (b * W + r) * B
                yield [(first + j, self.seed) for j in range(B)]
                b += 1
        while True:  # epoch after epoch, so one DataLoader (and its workers) serves the whole run
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if hasattr(self.dataset, 'epoch_order'):  # a dataset read in chunks (latent_cache.LatentCache) orders itself
                perm = self.dataset.epoch_order(g)
            else:
                perm = torch.randperm(len(self.dataset), generator=g).tolist()
            for b in range(start, self.batches_per_epoch):
                first = (b * W + r) * B
                # the item seed mixes seed, epoch and position, so a flip differs from epoch to epoch
                yield [(perm[first + j], (self.seed * 1_000_003 + epoch) * 1_000_033 + first + j) for j in range(B)]
            epoch, start = epoch + 1, 0

    def _start(self):
        sampler = self._batches(self.epoch, self.batch_in_epoch)
        # a private generator: creating workers must not consume the global torch RNG, or a resume would diverge.
        # The sampler never ends, so the workers live as long as the run: no restart (and GPU stall) at epoch ends.
        self._it = load_batches(Counted(self.dataset, with_index=True), batch_sampler=sampler,
                                num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed),
                                pin_memory=(self.dist.device.type == 'cuda'),
                                prefetch_factor=4 if self.num_workers > 0 else None)

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._start()
        x, y, unreadable, index = next(self._it)
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.unreadable.update(index[unreadable.bool()].tolist())
        return x, y


class Counted(torch.utils.data.Dataset):
    """A data.py dataset's items as (x, y, 1 if the item's file was unreadable and a neighbour stands in, else 0),
    and with_index the item's index after them, so that the loaders count unreadable files across worker processes."""
    def __init__(self, dataset, with_index=False):
        self.dataset, self.with_index = dataset, with_index

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        x, y, unreadable = self.dataset.load(item)
        if not self.with_index:
            return x, y, unreadable
        return x, y, unreadable, item[0] if isinstance(item, tuple) else item


class WorkerStopped(Exception):
    """A die() inside a DataLoader worker process: DataLoader re-raises it in the main process (with the worker's
    traceback in its text), where load_batches ends the script with the sentence alone."""


class _Guarded(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        try:
            return self.dataset[item]
        except SystemExit as e:  # a SystemExit would end the worker process, and the main one would only learn that
            if torch.utils.data.get_worker_info() is None:  # no workers: the main process, where it ends the script as
                raise  # it is (a signal's SystemExit(128 + signum) keeps its status, not a string '143' and status 1)
            raise WorkerStopped(str(e.code)) from None


def load_batches(dataset, **dataloader_args):
    """The batches of DataLoader(dataset, **dataloader_args), the one way the project reads data in worker
    processes: a user error met in a worker (data.py's die(), such as "none of the images could be read") ends the
    script with its one sentence, as it would without workers, and a worker killed by the system is one sentence too,
    not a traceback from the DataLoader's machinery."""
    it = iter(DataLoader(_Guarded(dataset), **dataloader_args))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except WorkerStopped as e:  # its text ends with the worker's last line, "WorkerStopped: error: ..."
            raise SystemExit(str(e).strip().splitlines()[-1].split('WorkerStopped: ', 1)[-1]) from None
        except RuntimeError as e:
            if 'DataLoader worker (pid' not in str(e):  # "... exited unexpectedly", "... is killed by signal"
                raise
            die(f"a data loader worker process died ({str(e).splitlines()[0][:160]}); it was probably killed for "
                f"memory: lower --num_workers or --batch_size, and run again.")
        yield batch




# -----------------------------------------------------------------------------
# outputs

def save_image_grid(x, path, nrow=8, row_labels=None):
    """x (B, 3, H, W) in [-1, 1] -> one PNG grid, nrow images a row; row_labels: a name for each row, written in a
    white margin on the left, so that a reader can tell the rows apart."""
    import torchvision.utils as vutils
    from PIL import Image, ImageDraw
    grid = vutils.make_grid(((x.detach().float().cpu() + 1) / 2).clamp(0, 1), nrow=nrow, padding=2)
    image = Image.fromarray(grid.mul(255).add(0.5).clamp(0, 255).byte().permute(1, 2, 0).numpy())
    if row_labels:
        draw = ImageDraw.Draw(image)
        width = 8 + max(int(draw.textlength(label)) for label in row_labels)
        labelled = Image.new('RGB', (image.width + width, image.height), 'white')
        labelled.paste(image, (width, 0))
        draw, row = ImageDraw.Draw(labelled), x.shape[2] + 2
        for i, label in enumerate(row_labels):
            draw.text((4, 2 + i * row + row // 2), label, fill='black', anchor='lm')
        image = labelled
    with no_space_is_an_error(os.path.dirname(os.path.abspath(path))):
        image.save(path)


def tile_videos(videos, nrow, pad=2):
    """uint8 videos (N, T, H, W, 3) -> one uint8 video (T, rows * (H + pad) - pad, nrow * (W + pad) - pad, 3): the
    clips side by side, nrow per row, black gaps of pad pixels, empty cells black."""
    N, T, H, W, _ = videos.shape
    rows = -(-N // nrow)
    grid = np.zeros((T, rows * (H + pad) - pad, nrow * (W + pad) - pad, 3), np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, nrow)
        grid[:, r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = video
    return grid


def write_mp4(frames, path, fps=8):
    """uint8 frames (T, H, W, 3) -> an H.264 MP4 (PyAV; yuv420p at CRF 12, near-lossless, played everywhere). yuv420p
    needs even sizes, so an odd height or width gets one more row or column, a copy of the last."""
    import av  # only sampling writes video
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode='edge')
    with av.open(path, mode='w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = W + W % 2, H + H % 2, 'yuv420p'
        stream.options = {'crf': '12'}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')))
        container.mux(stream.encode())  # flush the encoder


def save_video_grid(videos, out_dir, fps=8, max_videos=64):
    """Previews of uint8 videos (N, T, H, W, 3): out_dir/grid.mp4 and grid.gif (the first max_videos clips tiled) and
    out_dir/grid_frames.png (their first frames above their middle frames, one grid each). Returns the paths."""
    from PIL import Image
    videos = videos[:max_videos]
    nrow = max(int(len(videos) ** 0.5), 1)
    grid = tile_videos(videos, nrow)  # (T, GH, GW, 3)
    paths = [os.path.join(out_dir, name) for name in ('grid.mp4', 'grid.gif', 'grid_frames.png')]
    write_mp4(grid, paths[0], fps)
    gif = [Image.fromarray(frame) for frame in grid]
    gif[0].save(paths[1], save_all=True, append_images=gif[1:], duration=round(1000 / fps), loop=0)
    gap = np.zeros((2, grid.shape[2], 3), np.uint8)
    Image.fromarray(np.concatenate([grid[0], gap, grid[len(grid) // 2]])).save(paths[2])
    return paths


def peak_memory(device):
    """{'peak_mem_gb': the most GPU memory tensors have held so far} on CUDA, {} elsewhere: for the log line."""
    return {'peak_mem_gb': torch.cuda.max_memory_allocated(device) / 2 ** 30} if device.type == 'cuda' else {}


class Logger:
    """
    Appends one JSON line per log call to out_dir/log.jsonl and prints it; only the master process writes. With
    tensorboard=True the same scalars, and the preview images passed to image(), also go to TensorBoard event files in
    out_dir/tensorboard (torch.utils.tensorboard, imported only then: the tensorboard package stays optional). A run
    resumed at `step` hides the events logged after that step, as resume_run truncates log.jsonl.
    """
    def __init__(self, out_dir, master, tensorboard=False, step=0):
        self.master = master
        self.path = os.path.join(out_dir, 'log.jsonl')
        self.writer = None
        if tensorboard:
            import importlib.util
            if importlib.util.find_spec('tensorboard') is None:  # on every rank, so that all of them stop
                die("--tensorboard needs the tensorboard package; pip install tensorboard.")
            if master:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(out_dir, 'tensorboard'), purge_step=step + 1 if step else None)

    def log(self, step, **scalars):
        if not self.master:
            return
        row = {'step': step, 'time': round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v) for k, v in scalars.items()})
        with no_space_is_an_error(os.path.dirname(os.path.abspath(self.path))), open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, float) and k != 'time':
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()
        text = ' '.join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != 'time')
        try:
            from tqdm import tqdm
            tqdm.write(text)
        except ImportError:
            print(text)
        sys.stdout.flush()

    def image(self, tag, path, step):
        """The preview grid just written to `path` (a PNG), beside the scalars in TensorBoard."""
        if self.writer is not None:
            from PIL import Image
            self.writer.add_image(tag, np.asarray(Image.open(path).convert('RGB')), step, dataformats='HWC')
            self.writer.flush()

"""
The command line, read before torch is imported: every script parses its flags with these torch-free pieces first, so
that --help and a mistyped flag answer at once, and sets its CPU threads (cpu_threads) while torch can still obey.
The choices a flag offers are defined here, once, and the modules that implement them import them from here. Nothing
in this file may import torch, numpy or a project module that does (tests/test_help.py checks it).
"""
import os
import sys
import time
import argparse

# -----------------------------------------------------------------------------
# the choices of the flags, imported by the modules that implement them

SE_DOWNSAMPLING = ('bilinear', 'mean', 'antialiased')  # model.se_downsample's operators (train_ae.py --se_down)
REC_LOSSES = ('l1', 'l2')  # model.pixel_loss (train_ae.py --rec_loss)
DISC_LOSSES = ('hinge', 'vanilla')  # model.DISC_LOSSES, taming's disc_loss (train_ae.py --disc_loss)
SCHEDULES = ('linear', 'ldm_linear', 'scaled_linear')  # diffusion.beta_schedule (train_ldm.py --schedule)
# each schedule's (beta_1, beta_T), CompVis' (linear_start, linear_end); train_ldm.py --beta_start/--beta_end move them
SCHEDULE_BETAS = {'linear': (1e-4, 0.02), 'ldm_linear': (0.0015, 0.0195), 'scaled_linear': (0.00085, 0.012)}
SPACINGS = ('even', 'ddim', 'ldm')  # diffusion.spaced_timesteps (sample.py --spacing)
DIFFUSION_LOSSES = ('l2', 'l1')  # Diffusion's and Flow's loss_type, CompVis' (train_ldm.py --diffusion_loss)
FLOW_PREDICTIONS = ('velocity', 'x0', 'noise')  # diffusion.Flow's outputs (train_ldm.py --prediction)
TIME_SAMPLINGS = ('uniform', 'logit_normal')  # diffusion.Flow's training times (train_ldm.py --time_sampling)
TASKS = ('none', 'sr', 'inpaint', 'semantic', 'text', 'layout')  # conditioning.py's tasks (train_ldm.py and sample.py --task)
DEGRADATIONS = ('bicubic', 'bsr_light')  # conditioning.degrade (train_ldm.py --degradation)
MASK_KINDS = ('thick', 'thin', 'box', 'mixed')  # conditioning.random_mask (train_ldm.py --masks)
DATASETS = ('textured', 'shapes')  # data.dead_leaves' styles, the embedded sets (--dataset)

# the weight files that eval_fid.py's flags name (inception.py and i3d.py load them)
FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
FID_WEIGHTS_FILE = os.path.basename(FID_WEIGHTS_URL)
I3D_WEIGHTS_URL = 'https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt'
I3D_WEIGHTS_FILE = os.path.basename(I3D_WEIGHTS_URL)

# train_ae.py: video runs have their own defaults, sized so that `--num_frames 17` trains on two CPU cores in under ten
# minutes; SE factor 2 only, since LPIPS needs 16 px and a 4x smaller 32 px frame has 8
VIDEO_DEFAULTS = dict(out_dir='out/video_ae', image_size=32, batch_size=1, max_steps=200, lr=2e-4, se_scales='2',
                      eval_interval=100, ckpt_interval=100)

# -----------------------------------------------------------------------------
# user errors

def die(message):
    """A user error: one sentence, no traceback."""
    raise SystemExit(f"error: {message}")

STOPPED = "what was written before is kept (a training run continues from its last checkpoint with --resume)"


def stop_on_signals():
    """Ctrl-C (SIGINT) and SIGTERM end the script with one line, not a KeyboardInterrupt's traceback: the signal
    becomes a SystemExit in the main thread, so that its locks are released (atexit) and a checkpoint being written
    on its thread is finished; writes are atomic, so what was saved before stays. Exit status 128 + the signal."""
    import signal

    def stop(signum, frame):
        if 'tqdm' in sys.modules:  # a progress bar ends its line now, not after the message at exit
            for bar in list(getattr(sys.modules['tqdm'].tqdm, '_instances', [])):
                bar.close()
        print(f"stopped by {signal.Signals(signum).name}; {STOPPED}.", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)

# -----------------------------------------------------------------------------
# argparse types and the shared flags

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the script's docstring as written, and after every flag's help its default, so that the two can
    never disagree and a new flag is written in one place."""


def checked(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type: a number of `kind` (int or float) in [lo, hi] (or open at either end). A bad value stops the
    script at argument parsing, before anything is built, with argparse's one line: 'argument --x: must be ...'."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got '{text}'")
        bounds = [f"{'>' if lo_open else '>='} {lo}" if lo is not None else None,
                  f"{'<' if hi_open else '<='} {hi}" if hi is not None else None]
        ok = value == value and abs(value) != float('inf')  # NaN and inf are never a setting
        ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
        ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def unit_interval(text):
    """An argparse type: 'lo,hi' with 0 <= lo <= hi <= 1 -> (lo, hi): a share of an image's area, an interval of times."""
    try:
        lo, hi = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers such as '0.4,0.5', got '{text}'")
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"must be lo,hi with 0 <= lo <= hi <= 1, got '{text}'")
    return lo, hi


def int_list(lo):
    """An argparse type: comma-separated integers, each >= lo ('2,4' -> [2, 4])."""
    def parse(text):
        try:
            values = [int(v) for v in text.split(',') if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers such as '2,4', got '{text}'")
        if any(v < lo for v in values):
            raise argparse.ArgumentTypeError(f"every value must be >= {lo}, got '{text}'")
        return values
    parse.__name__ = 'list of integers'
    return parse


DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def device(text):
    """An argparse type: the form of --device, 'auto', 'cpu', 'cuda' or 'cuda:N'. Whether that device is there is
    common.select_device's question, asked once torch is imported; it also resolves 'auto'."""
    kind, _, index = text.partition(':')
    if not (text in ('auto', 'cpu', 'cuda') or (kind == 'cuda' and index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected {DEVICES}, got '{text}'")
    return text


def add_device_arg(parser, default='auto'):
    """--device, the same flag in every script."""
    parser.add_argument('--device', type=device, default=default,
                        help=f"where to run: {DEVICES} ('auto': the GPU when there is one, else the CPU)")


def add_common_args(parser, **defaults):
    """The flags every training script shares, with the same names and meanings. `defaults` overrides per script."""
    d = dict(data=None, image_size=64, batch_size=16, max_steps=2000, out_dir='out', preset='tiny', seed=0,
             device='auto', dtype='auto', lr=1e-4, grad_accum=1, log_interval=10, eval_interval=250,
             ckpt_interval=250, num_workers=2)
    d.update(defaults)
    p = parser
    positive = checked(int, lo=1)
    p.add_argument('--data', type=str, default=d['data'], help='image folder (searched recursively); omitted: the embedded dead-leaves dataset')
    p.add_argument('--dataset', type=str, default='textured', choices=DATASETS, help='without --data: the embedded textured dead leaves, or shapes (4-12 large, recognisable leaves)')
    p.add_argument('--image_size', type=positive, default=d['image_size'], help='training resolution in pixels')
    p.add_argument('--random_crop', action='store_true', help='random crops (after a random downscale) instead of resize + center crop')
    p.add_argument('--batch_size', type=positive, default=d['batch_size'], help='images per GPU per micro-step')
    p.add_argument('--grad_accum', type=positive, default=d['grad_accum'], help='micro-steps per optimizer step')
    p.add_argument('--max_steps', type=positive, default=d['max_steps'], help='optimizer steps to train for (in all, counting those of a resumed run)')
    p.add_argument('--lr', type=checked(float, lo=0, lo_open=True), default=d['lr'], help='learning rate')
    p.add_argument('--out_dir', type=str, default=d['out_dir'], help='where checkpoints, logs and images go')
    p.add_argument('--overwrite', action='store_true', help='start a new run in an --out_dir that holds another run (its ckpt.pt, config.json and log.jsonl are replaced)')
    p.add_argument('--preset', type=str, default=d['preset'], help='model size preset (see model.py)')
    p.add_argument('--seed', type=checked(int, lo=0), default=d['seed'], help='global seed; each rank adds its rank')
    add_device_arg(p, d['device'])
    p.add_argument('--dtype', type=str, default=d['dtype'], choices=['auto', 'float32', 'bfloat16', 'float16'],
                   help="autocast dtype; 'auto' = bfloat16 on GPUs that support it, else float32")
    p.add_argument('--compile', action='store_true', help='torch.compile the model')
    p.add_argument('--resume', action='store_true', help='continue exactly from out_dir/ckpt.pt')
    p.add_argument('--allow_changes', action='store_true', help='with --resume: accept settings that change the data stream (data, image size, batch size, seed); no longer exact')
    p.add_argument('--init_from', type=str, default=None, help='initial model weights (a checkpoint or public weights)')
    p.add_argument('--num_workers', type=checked(int, lo=0), default=d['num_workers'], help='data loader worker processes per rank')
    p.add_argument('--log_interval', type=positive, default=d['log_interval'], help='steps between log lines')
    p.add_argument('--eval_interval', type=positive, default=d['eval_interval'], help='steps between image grids / evaluations')
    p.add_argument('--ckpt_interval', type=positive, default=d['ckpt_interval'], help='steps between checkpoints')
    p.add_argument('--tensorboard', action='store_true', help='also log the scalars and preview grids to TensorBoard, in out_dir/tensorboard (needs the tensorboard package)')
    return p

def cuda_visible():
    """Whether an NVIDIA GPU is visible, read from the driver's files without loading torch (which takes seconds), for
    the defaults a script must choose before torch loads; CUDA_VISIBLE_DEVICES set empty or to -1 hides them."""
    if os.environ.get('CUDA_VISIBLE_DEVICES', None) in ('', '-1'):
        return False
    return os.path.exists('/proc/driver/nvidia/version') or any(
        name.startswith('nvidia') and name[6:].isdigit() for name in (os.listdir('/dev') if os.path.isdir('/dev') else []))

# -----------------------------------------------------------------------------
# CPU threads

def idle_cores(seconds=0.2):
    """The cores the rest of the machine leaves idle, from two reads of /proc/stat `seconds` apart (this process sleeps
    in between, so it does not count itself). None where there is no /proc/stat."""
    def read():
        with open('/proc/stat') as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, and idle + iowait
    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return None if total1 <= total0 else os.cpu_count() * (idle1 - idle0) / (total1 - total0)


def cpu_threads(reserve=0):
    """How many threads torch should use on the CPU: OMP_NUM_THREADS when it is set (torchrun sets it to 1 per process),
    else the cores that other processes leave idle, less `reserve` (the cores this script's own data-loader workers
    keep busy), at least 1 and at most the cores this process may use. Torch alone takes one thread a core, and a
    thread that shares its core with another process holds up every other thread at each OpenMP barrier: beside one
    busy process the README's train_ae.py command took 0.62 s a step at torch's 2 threads and 0.26 s at 1, beside a
    second torch job 2.20 s and 0.34 s (bench/bench_threads.py; 2 cores)."""
    if os.environ.get('OMP_NUM_THREADS', '').strip().isdigit() and int(os.environ['OMP_NUM_THREADS']) > 0:
        return int(os.environ['OMP_NUM_THREADS'])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    idle = idle_cores()
    return max(1, min(cores, cores if idle is None else round(idle)) - reserve)


def set_cpu_threads(reserve=0):
    """The thread policy of every script, applied before torch is imported (torch reads these variables when it
    loads). Where the user (or torchrun) set OMP_NUM_THREADS, nothing changes. Otherwise OMP_NUM_THREADS and
    MKL_NUM_THREADS come from cpu_threads(reserve), and where that is more than one thread, OMP_WAIT_POLICY=PASSIVE
    (unless set), so that threads waiting at a barrier sleep instead of spinning on a core that a process started later
    may need: at 2 threads, 0.38 s a step against 0.62 beside a busy process, 0.52 against 2.20 beside a second torch
    job, and 9% slower on an idle machine (bench/bench_threads.py). -> a phrase for the script's first line."""
    if 'OMP_NUM_THREADS' in os.environ:
        threads = cpu_threads()
        return f"{threads} CPU thread{'s' if threads > 1 else ''} (OMP_NUM_THREADS)"
    threads = cpu_threads(reserve)
    os.environ['OMP_NUM_THREADS'] = str(threads)
    os.environ.setdefault('MKL_NUM_THREADS', str(threads))
    if threads > 1:
        os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return f"{threads} CPU thread{'s' if threads > 1 else ''}"

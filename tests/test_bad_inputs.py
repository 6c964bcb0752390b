"""
The catalogue of bad inputs and faults (issue 11): what a careless or unlucky user does to the six scripts, and the
outcome each case must have. One row per case in CASES; to add a case, add a row.

A row is Case(name, run, expect):
  run     script('train_ae.py', *argv) runs a script as a user would, with `argv` (a list, or a function of
          (tmp, runs) that prepares files and returns the list); call(fn) runs fn(tmp, runs) for faults that no command
          line can cause (a full disk, a NaN loss). `runs` holds small real checkpoints made once per session.
  expect  Error(regex)         the script stops, exit status != 0, with one line that matches regex, no traceback;
          Skip(file, key, n)   the script finishes and the JSON `file` counts n unreadable files under `key`;
          Result(check)        the script finishes and check(tmp, runs, output) holds (it asserts).
Scripts run inside this process (runpy), so a case that stops at argument parsing costs milliseconds, not a torch
import; every case that is not a training or sampling run stops there.
"""
import io
import os
import re
import sys
import json
import errno
import random
import runpy
import signal
import shutil
import subprocess
import threading
import zlib
from contextlib import redirect_stdout, redirect_stderr
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from utils import cli
from utils import common
from utils import rundir
from utils import data
from utils import latent_cache
from diffusion import sample_generators, randn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--image_size', 16, '--batch_size', 2, '--num_workers', 0, '--log_interval', 1, '--device', 'cpu']
TINY_AE = TINY + ['--lpips_weight', 0, '--eval_interval', 1000, '--num_eval', 2]
TINY_LDM = TINY + ['--num_samples', 1, '--sample_steps', 1, '--eval_interval', 1000]

# -----------------------------------------------------------------------------
# running a script in this process


@dataclass
class Outcome:
    code: object   # exit status: 0, argparse's 2, or die()'s message
    message: str   # the last line the script printed on stderr, or die()'s message
    stdout: str


def run_script(name, argv):
    """python name argv..., in this process: global state that scripts change (RNGs, grad mode, the environment, where
    cli.set_cpu_threads writes) is put back. One thread: the models are tiny, and threads fighting over busy cores cost
    more than they give."""
    saved = (sys.argv, torch.is_grad_enabled(), torch.get_rng_state(), np.random.get_state(), random.getstate(),
             torch.get_num_threads(), dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
    sys.argv = [name, *map(str, argv)]
    torch.set_num_threads(1)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, name), run_name='__main__')
    except SystemExit as e:
        code = e.code if e.code is not None else 0
    finally:
        rundir.release_locks()  # what the interpreter's exit does for a script run on its own
        sys.argv = saved[0]
        torch.set_grad_enabled(saved[1])
        torch.set_rng_state(saved[2])
        np.random.set_state(saved[3])
        random.setstate(saved[4])
        torch.set_num_threads(saved[5])
        os.environ.clear()
        os.environ.update(saved[6])
        for s, handler in saved[7].items():  # cli.stop_on_signals and reproduce.py's end_children set their own
            signal.signal(s, handler)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    message = code if isinstance(code, str) else (lines[-1] if lines else '')
    return Outcome(code, message, out.getvalue())


def script(name, *argv):
    def run(tmp, runs):
        args = argv[0](tmp, runs) if len(argv) == 1 and callable(argv[0]) else list(argv)
        return run_script(name, args)
    run.label = name
    return run


def call(fn):
    def run(tmp, runs):
        out = io.StringIO()
        try:
            with redirect_stdout(out):
                result = fn(tmp, runs)
        except SystemExit as e:
            return Outcome(e.code, str(e.code), out.getvalue())
        return result if isinstance(result, Outcome) else Outcome(0, '', out.getvalue())
    run.label = 'function'
    return run

# -----------------------------------------------------------------------------
# expected outcomes


@dataclass
class Error:
    pattern: str

    def check(self, outcome, tmp, runs):
        assert outcome.code not in (0, None), f"expected an error, but it finished:\n{outcome.stdout[-2000:]}"
        assert '\n' not in outcome.message and 'Traceback' not in outcome.message
        assert outcome.message.startswith('error: ') or ': error: argument ' in outcome.message, outcome.message
        assert re.search(self.pattern, outcome.message), f"{outcome.message!r} does not match {self.pattern!r}"


@dataclass
class Refused(Error):
    """Error(pattern), and the payload of evil_pickle never ran: its marker file does not exist."""

    def check(self, outcome, tmp, runs):
        assert not (tmp / MARKER).exists(), "the pickled payload ran"
        super().check(outcome, tmp, runs)


@dataclass
class Skip:
    file: str
    key: str
    count: int

    def check(self, outcome, tmp, runs):
        assert outcome.code == 0, outcome.message
        assert json.load(open(tmp / self.file))[self.key] == self.count


@dataclass
class Result:
    check_fn: Callable = None  # None: the run (or call, whose own asserts are the check) finished

    def check(self, outcome, tmp, runs):
        assert outcome.code == 0, outcome.message
        if self.check_fn is not None:
            self.check_fn(tmp, runs, outcome)


@dataclass
class Case:
    name: str
    run: Callable
    expect: object

# -----------------------------------------------------------------------------
# small real checkpoints, made once: tiny AEs (f4 and f8) and an LDM on the f4 one


@pytest.fixture(scope='session')
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp('runs')
    for name, preset in (('ae4', 'tiny'), ('ae8', 'small')):
        o = run_script('train_ae.py', TINY_AE + ['--preset', preset, '--se_scales', 2, '--max_steps', 1, '--out_dir', d / name])
        assert o.code == 0, o.message
    o = run_script('train_ldm.py', TINY_LDM + ['--ae', d / 'ae4' / 'ckpt.pt', '--max_steps', 2, '--ckpt_interval', 1,
                                               '--ema_decay', 0.5, '--out_dir', d / 'ldm'])
    assert o.code == 0, o.message
    o = run_script('train_ldm.py', TINY_LDM + ['--ae', d / 'ae4' / 'ckpt.pt', '--max_steps', 2, '--objective', 'flow',
                                               '--out_dir', d / 'ldm_flow'])
    assert o.code == 0, o.message
    other = torch.load(d / 'ae4' / 'ckpt.pt', weights_only=True)  # the same AE but for one weight: another AE
    first = next(iter(other['model']))
    other['model'][first] = other['model'][first] + 0.01
    torch.save(other, d / 'ae4_other.pt')
    return {'ae4': d / 'ae4' / 'ckpt.pt', 'ae8': d / 'ae8' / 'ckpt.pt', 'ae4_other': d / 'ae4_other.pt',
            'ldm': d / 'ldm' / 'ckpt.pt', 'ae4_dir': d / 'ae4', 'ldm_dir': d / 'ldm', 'ldm_flow': d / 'ldm_flow' / 'ema.pt',
            'ldm_flow_dir': d / 'ldm_flow'}


def copy_run(src, tmp, name='run'):
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def garbage(tmp, name, n=3000):
    path = tmp / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def bad_image_folder(tmp, size=32, good=4):
    """`good` readable images plus three bad files: a text file named .png, a truncated JPEG and a PNG whose header
    claims a decompression bomb."""
    folder = tmp / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f'good{i}.png')
    (folder / 'text.png').write_text('not an image')
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format='JPEG')
    (folder / 'truncated.jpg').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    png = bytearray((folder / 'good0.png').read_bytes())  # IHDR: width, height at bytes 16..24, its CRC at 29..33
    png[16:24] = (60000).to_bytes(4, 'big') * 2  # 60000 x 60000 pixels: over twice PIL's decompression-bomb limit
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, 'big')
    (folder / 'bomb.png').write_bytes(bytes(png))
    return folder


def samples_npz(tmp, n=4, size=16):
    path = tmp / 'fake.npz'
    np.savez(path, arr_0=np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def saved_npz(tmp, **arrays):
    path = tmp / 'saved.npz'
    np.savez(path, **arrays)
    return path


def run_without_checkpoint(tmp, runs):
    run = copy_run(runs['ae4_dir'], tmp)
    os.remove(run / 'ckpt.pt')  # config.json and log.jsonl of a run killed before its first checkpoint
    return run


def earlier_samples(tmp):
    os.makedirs(tmp / 'samples' / 'images')
    (tmp / 'samples' / 'images' / '000007.png').write_bytes(b'an image of another model')
    return tmp / 'samples'


# files of a user's that are named like temporaries: a lock's clean-up must leave every one of them (issue 33). The
# last is a writer's partial (rundir.partial_path's name) of a process that runs: this test process's parent
USER_FILES = ('notes.tmp', 'x.tmp.2', 'thesis.tex.tmp.2', 'ckpt.pt.tmp.3', '.notes.partial',
              f'.draft.txt.{os.getppid()}.partial')


def plant_user_files(folder):
    os.makedirs(folder, exist_ok=True)
    for name in USER_FILES:
        (folder / name).write_text('a file of the user')
    return folder


def dead_pid():
    p = subprocess.Popen([sys.executable, '-c', 'pass'])
    p.wait()
    return p.pid

# -----------------------------------------------------------------------------
# checks of results


def different_seeds_differ_and_sample_i_depends_on_seed_and_i(tmp, runs):
    def samples(seed, n, batch_size):
        o = run_script('sample.py', ['--ckpt', runs['ldm'], '--num_samples', n, '--batch_size', batch_size, '--steps', 2,
                                     '--seed', seed, '--device', 'cpu', '--out_dir', tmp / f's{seed}_{n}_{batch_size}'])
        assert o.code == 0, o.message
        return np.load(tmp / f's{seed}_{n}_{batch_size}' / 'samples.npz')['arr_0']
    a, b, c = samples(0, 2, 2), samples(1, 2, 2), samples(0, 3, 1)
    for i in range(2):
        assert (a[i] != b[i]).any(), f"sample {i} is the same for seeds 0 and 1"
    assert (c[:2] == a).all()  # more samples, another batch size: the first two are unchanged


def noise_never_shared_between_seed_index_pairs(tmp, runs):
    # the old rule, seed * 2**32 + i in a torch CPU generator, kept the low 32 bits (i): every seed gave the same noise
    # SeedSequence([seed, i]) would fail here: it drops trailing zero words, so (2**32, 0) would be (0, 1)
    pairs = [(s, i) for s in range(4) for i in range(8)] + [(2 ** 32, 0), (0, 2 ** 32), (2 ** 32 + 5, 3), (5, 2 ** 32 + 3)]
    noise = randn((len(pairs), 4, 4, 4), [sample_generators(s, [i])[0] for s, i in pairs], 'cpu')
    assert len({tuple(row.tolist()) for row in noise.flatten(1)}) == len(pairs)  # no two pairs share noise
    batch = randn((8, 4, 4, 4), sample_generators(0, range(8)), 'cpu')
    assert torch.equal(batch, noise[:8])  # sample i's noise is its own, whatever else is in the batch


def changed_settings_are_printed(*expected):
    def check(tmp, runs, outcome):
        for text in expected:
            assert text in outcome.stdout, outcome.stdout[-2000:]
    return check


def resume_cleans_up(tmp, runs, outcome):
    run = tmp / 'run'
    assert not [f for f in os.listdir(run) if f.endswith('.partial') and f not in USER_FILES], os.listdir(run)
    assert set(USER_FILES) <= set(os.listdir(run)), os.listdir(run)  # the user's files named like temporaries stay
    steps = [r['step'] for r in map(json.loads, open(run / 'log.jsonl')) if 'loss' in r]
    assert steps == sorted(set(steps)) and steps[-1] == 3 and 99 not in steps, steps


def overwrite_starts_a_new_log(tmp, runs, outcome):
    steps = [r['step'] for r in map(json.loads, open(tmp / 'run' / 'log.jsonl')) if 'loss' in r]
    assert steps == [1], steps


def overwrite_replaces_every_sample(tmp, runs, outcome):
    images = sorted(os.listdir(tmp / 'samples' / 'images'))
    assert images == ['000000.png'], images


def folder_counted_once(tmp, runs, outcome):
    assert json.load(open(tmp / 'spec' / 'spectrum.json'))['num_images'] == 4


def prepare_resume_with_debris(tmp, runs):
    run = copy_run(runs['ldm_dir'], tmp)
    (run / f'.ckpt.pt.{dead_pid()}.partial').write_bytes(b'half a checkpoint')
    (run / f'.ema.pt.{dead_pid()}.partial').write_bytes(b'half an EMA export')  # the second file of a checkpoint
    (run / f'.log.jsonl.{dead_pid()}.partial').write_bytes(b'{"step": 1')  # truncate_log's, killed before its rename
    plant_user_files(run)
    with open(run / 'log.jsonl', 'a') as f:  # the steps a killed run logged after its last checkpoint
        f.write(json.dumps({'step': 99, 'loss': 1.0}) + '\n' + '{"step": 100, "lo')
    return TINY_LDM + ['--out_dir', run, '--resume', '--max_steps', 3, '--ckpt_interval', 1]


def checkpoints_before_flow_are_ddpm(tmp, runs):
    # train_ldm.py wrote no 'objective' before flow: its 'prediction' (eps here) was the objective. Such a run samples
    # as DDPM, exactly as the same run with the key does, and resumes
    old = copy_run(runs['ldm_dir'], tmp, 'old')
    for name in ('ckpt.pt', 'ema.pt'):
        ckpt = torch.load(old / name, weights_only=True)
        for key in ('objective', 'time_sampling', 'logit_mean', 'logit_std', 'time_shift'):
            del ckpt['config'][key]
        torch.save(ckpt, old / name)
    samples = []
    for ckpt, out in ((old / 'ema.pt', tmp / 's_old'), (runs['ldm_dir'] / 'ema.pt', tmp / 's_new')):
        o = run_script('sample.py', ['--ckpt', ckpt, '--num_samples', 2, '--steps', 2, '--device', 'cpu', '--out_dir', out])
        assert o.code == 0 and 'ddim 2 steps' in o.stdout, o.message
        samples.append(np.load(out / 'samples.npz')['arr_0'])
    assert np.array_equal(*samples)
    o = run_script('train_ldm.py', TINY_LDM + ['--out_dir', old, '--resume', '--max_steps', 3])
    assert o.code == 0, o.message

# -----------------------------------------------------------------------------
# faults no command line can cause


def no_space_during_checkpoint(tmp, runs):
    path = tmp / 'ckpt.pt'
    torch.save({'old': 1}, path)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b'partial')
        raise OSError(errno.ENOSPC, 'No space left on device')
    torch.save = full_disk
    try:
        common.save_checkpoint({'w': torch.zeros(2 ** 19)}, path)  # 2 MB
    finally:
        torch.save = real_save
        assert torch.load(path) == {'old': 1}  # the previous checkpoint is untouched
        assert os.listdir(tmp) == ['ckpt.pt']  # and no temporary file is left


def on_a_full_disk(owner, name, script_name, argv):
    """Run a script while owner.name (a function that writes files) fails as a full disk does."""
    def fn(tmp, runs):
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, 'No space left on device')
        real = getattr(owner, name)
        setattr(owner, name, full)
        try:
            return run_script(script_name, argv(tmp, runs))
        finally:
            setattr(owner, name, real)
    return fn


def sample_grid_crashes_after_training(tmp, runs):
    """The optional sample grid at the end fails (any bug or fault in it): the finished run's checkpoint is on disk."""
    class GridFailed(Exception):
        pass

    def fail(*args, **kwargs):
        raise GridFailed
    real, common.save_image_grid = common.save_image_grid, fail
    try:
        run_script('train_ldm.py', TINY_LDM + ['--ae', runs['ae4'], '--max_steps', 2, '--out_dir', tmp / 'o'])
        raise AssertionError('the sample grid did not run')
    except GridFailed:
        pass
    finally:
        common.save_image_grid = real
    for t in threading.enumerate():  # as the interpreter does at exit: the checkpoint writer thread finishes its file
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    assert torch.load(tmp / 'o' / 'ckpt.pt', weights_only=True)['step'] == 2


def no_space_while_logging(tmp, runs):
    with rundir.no_space_is_an_error(tmp):
        raise OSError(errno.ENOSPC, 'No space left on device')


def nan_loss(with_checkpoint):
    def fn(tmp, runs):
        if with_checkpoint:
            (tmp / 'ckpt.pt').write_bytes(b'x')
        dist = common.Dist(False, 0, 0, 1, torch.device('cpu'), True)
        common.stop_if_non_finite(torch.tensor(7.0, dtype=torch.float64), str(tmp / 'ckpt.pt'), dist,  # NaN at step 7
                                  saved_step=5 if with_checkpoint else None)
    return fn


def lpips_lin_weights_garbage(tmp, runs):
    from evaluation.perceptual import LPIPS
    try:
        LPIPS(lin_weights=str(garbage(tmp, 'lin.pth')), pretrained=False)
    except ValueError as e:
        common.die(str(e))  # how train_ae.py and eval_fid.py report it


def exif_rotated_photo_is_upright(tmp, runs):
    a = np.zeros((8, 16, 3), np.uint8)  # 16 wide, 8 high, stored sideways with orientation 6 (turn 90 degrees)
    a[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp / 'phone.jpg', exif=exif, quality=100)
    img = data.open_image(tmp / 'phone.jpg')
    assert img.size == (8, 16)  # upright: 8 wide, 16 high
    top, bottom = np.asarray(img)[:6].mean(), np.asarray(img)[10:].mean()
    assert top > 200 and bottom < 50  # the white left half of the stored image is the top after the turn


def dark_16bit_png_stays_dark(tmp, runs):
    a = np.full((8, 8), 1000, np.uint16)  # 1000 / 65535 of full scale
    Image.fromarray(a).save(tmp / 'dark.png')
    img = data.open_image(tmp / 'dark.png')
    assert np.asarray(img).max() == round(1000 / 65535 * 255)  # 4, not 255 (1000 read as 8-bit would saturate)


def link_loop_and_pipe_are_listed_once(tmp, runs):
    folder = bad_image_folder(tmp)
    for bad in ('text.png', 'truncated.jpg', 'bomb.png'):
        os.remove(folder / bad)
    os.symlink(folder, folder / 'loop')  # a link to its own folder
    os.symlink(folder, tmp / 'again')
    os.symlink(tmp / 'again', folder / 'again')  # the same folder by another path
    os.mkfifo(folder / 'pipe.png')  # reading it would block forever
    assert [os.path.basename(f) for f in data.list_files(folder)[0]] == [f'good{i}.png' for i in range(4)]


def prepare_loop_folder(tmp, runs):
    link_loop_and_pipe_are_listed_once(tmp, runs)
    return ['--data', tmp / 'images', '--image_size', 16, '--num_images', 100, '--device', 'cpu', '--out_dir', tmp / 'spec']


# -----------------------------------------------------------------------------
# issue 19: code in pickles, runs that trample each other, files of other types, late checks, files of the wrong shape

MARKER = 'PAYLOAD_RAN'


class Payload:
    """Unpickling this calls exec, which writes the marker file: what a malicious checkpoint does."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def evil_pickle(tmp, name='evil.pt', like=None):
    """A torch file whose unpickling runs code: `like` (a checkpoint's dict, or a state dict) with the payload inside."""
    path = tmp / name
    os.makedirs(path.parent, exist_ok=True)
    obj = dict(like or {'model': {}, 'config': {'preset': 'tiny', 'ae_config': {}}})
    obj['payload'] = Payload(tmp / MARKER)
    torch.save(obj, path)
    return path


def evil_run(src, tmp):
    """A copy of the run `src` whose ckpt.pt carries the payload."""
    run = copy_run(src, tmp)
    evil_pickle(tmp, 'run/ckpt.pt')
    return run


def evil_in_hub_cache(file_name, script_name, argv):
    """Run a script with the torch hub cache holding the payload under the name of the weights it downloads."""
    def fn(tmp, runs):
        old = torch.hub.get_dir()
        torch.hub.set_dir(str(tmp / 'hub'))
        try:
            evil_pickle(tmp, f'hub/checkpoints/{file_name}', like={'w': torch.zeros(1)})
            return run_script(script_name, argv(tmp, runs))
        finally:
            torch.hub.set_dir(old)
    return fn


def evil_in_reproduce_tree(tmp, runs):
    """reproduce.py records an artefact's settings before it trains it; a ckpt.pt planted beside matching settings is
    read back (for its step) on the next run. Training is stood in for by a failing subprocess."""
    class Failed:  # a child script that exits 1 at once
        returncode = 1

        def poll(self):
            return 1

        def wait(self, timeout=None):
            return 1
    real = subprocess.Popen
    subprocess.Popen = lambda cmd, *a, **k: Failed() if any(str(c).endswith('.py') for c in cmd) else real(cmd, *a, **k)
    try:
        argv = ['--smoke', '--seeds', 1, '--out_dir', tmp / 'rep']
        first = run_script('repro/reproduce.py', argv)
        assert first.code != 0  # the stand-in training failed, after the settings were recorded
        # a training run's settings (not the data's): the first one reproduce.py reads back (seed 0's control)
        settings = sorted(root for root, _, files in os.walk(tmp / 'rep')
                          if 'reproduce_settings.json' in files and os.path.basename(root) != 'data')[0]
        evil_pickle(tmp, os.path.relpath(os.path.join(settings, 'ckpt.pt'), tmp))
        return run_script('repro/reproduce.py', argv)
    finally:
        subprocess.Popen = real


def video_npz(tmp, name='v.npz', n=2, frames=16, size=16):
    path = tmp / name
    np.savez(path, arr_0=np.random.default_rng(2).integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8))
    return path


def live_lock(folder, host=None):
    """A lock of another process that runs (this process's parent) on this host, or of one on another host."""
    import socket
    os.makedirs(folder, exist_ok=True)
    (folder / '.lock').write_text(f"{os.getppid()} {host or socket.gethostname()} 0\n")
    return folder


def live_file_lock(path):
    """rundir.lock_file's lock of the output file `path`, held by a process that runs (this process's parent)."""
    import socket
    (path.parent / f'.{path.name}.lock').write_text(f"{os.getppid()} {socket.gethostname()} 0\n")
    return path


def dead_lock(folder):
    import socket
    os.makedirs(folder, exist_ok=True)
    (folder / '.lock').write_text(f"{dead_pid()} {socket.gethostname()} 0\n")
    return folder


def saved(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)
    return path


def edited_checkpoint(src, dst, **changes):
    """A copy of the checkpoint `src` with some keys replaced (a value of None removes the key)."""
    ckpt = torch.load(src, weights_only=True)
    for k, v in changes.items():
        if v is None:
            ckpt.pop(k, None)
        else:
            ckpt[k] = v
    return saved(dst, ckpt)


def edited_run(src, tmp, **changes):
    """A copy of the run `src` whose ckpt.pt has some keys replaced."""
    run = copy_run(src, tmp)
    edited_checkpoint(run / 'ckpt.pt', run / 'ckpt.pt', **changes)
    return run


def backbone_edit(ckpt_path, **changes):
    config = torch.load(ckpt_path, weights_only=True)['config']
    return {**config, 'backbone': {**config['backbone'], **changes}}


def ldm_with_classes(tmp, runs, dropout):
    """The runs' LDM made class-conditional (2 classes, label dropout `dropout`), as its EMA export."""
    from denoiser import build_backbone
    ckpt = torch.load(runs['ldm'], weights_only=True)
    backbone = {**ckpt['config']['backbone'], 'num_classes': 2, 'class_dropout_prob': dropout}
    config = {**ckpt['config'], 'backbone': backbone}
    export = {'ema': build_backbone(**backbone).state_dict(), 'step': ckpt['step'], 'config': config,
              'latent_scale': ckpt['latent_scale'], 'latent_shift': ckpt['latent_shift']}
    return saved(tmp / 'cond' / 'ema.pt', export)


def ema_behind_ckpt(tmp, runs):
    run = copy_run(runs['ldm_dir'], tmp)
    ema = torch.load(run / 'ema.pt', weights_only=True)
    saved(run / 'ema.pt', {**ema, 'step': ema['step'] - 1})  # what a kill between the two writes leaves
    return ['--ckpt', run / 'ema.pt', '--device', 'cpu', '--out_dir', tmp / 's']


def folder_with(tmp, names, good=4, size=16):
    """`good` PNGs plus the files `names` ('x.gif', '.ipynb_checkpoints/y.png', ...), each a readable image."""
    folder = tmp / 'images'
    rng = np.random.default_rng(0)
    for name in [f'good{i}.png' for i in range(good)] + list(names):
        os.makedirs((folder / name).parent, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
    return folder


def video_folder(tmp, bad=1):
    """Two 16-frame clips of 16x16 noise as MP4 files, and `bad` files named .mp4 that are none."""
    folder = tmp / 'videos'
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        common.write_mp4(rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), str(folder / f'v{i}.mp4'))
    for i in range(bad):
        (folder / f'broken{i}.mp4').write_bytes(b'not a video')
    return folder


def json_has(file, **expected):
    def check(tmp, runs, outcome):
        got = json.load(open(tmp / file))
        for k, v in expected.items():
            assert got.get(k) == v, (k, got.get(k), v)
    return check


def stdout_has(*texts, absent=()):
    def check(tmp, runs, outcome):
        for text in texts:
            assert text in outcome.stdout, outcome.stdout[-2000:]
        for text in absent:
            assert text not in outcome.stdout, outcome.stdout[-2000:]
    return check


def damaged_cache(damage):
    """A latent cache made by latent_cache.build_latent_cache with a stand-in autoencoder, damaged, then asked for again: it
    is made again, whole, with a message."""
    def fn(tmp, runs):
        images = data.DeadLeaves(8, seed=0)
        encode = lambda x: torch.nn.functional.avg_pool2d(x, 2)  # noqa: E731
        dist = common.Dist(False, 0, 0, 1, torch.device('cpu'), True)
        build = lambda: latent_cache.build_latent_cache(tmp / 'c', images, encode, (3, 4, 4), {'ae_sha256': 'a'}, 6, 3,  # noqa: E731
                                                dist, seed=0, random_crop=False, num_workers=0)
        first = build().latents.copy()
        damage(tmp / 'c')
        again = build()
        assert np.array_equal(again.latents, first) and len(again) == 6
    return fn


def cache_does_not_move_the_run(tmp, runs):
    """The same command trains the same whether the latent cache had to be built or was there already."""
    argv = lambda out: TINY_LDM + ['--ae', runs['ae4'], '--max_steps', 2, '--cache_latents', tmp / 'cache',  # noqa: E731
                                   '--cache_size', 4, '--out_dir', tmp / out]
    losses = []
    for out in ('built', 'reused'):
        o = run_script('train_ldm.py', argv(out))
        assert o.code == 0, o.message
        losses.append([r['loss'] for r in map(json.loads, open(tmp / out / 'log.jsonl')) if 'loss' in r])
    assert losses[0] == losses[1], losses


def cache_leaves_unreadable_out(tmp, runs, outcome):
    meta = json.load(open(tmp / 'cache' / 'meta.json'))
    labels = np.load(tmp / 'cache' / 'labels.npy')
    assert meta['skipped_images'] == 3 and (labels < 0).sum() == 3 and len(labels) == 8
    rows = [r for r in map(json.loads, open(tmp / 'o' / 'log.jsonl')) if 'loss' in r]
    assert rows[-1]['skipped_images'] == 3


def read_only(path_fn, script_name, argv):
    """Run a script while the folder path_fn(tmp) reads as not writable (os.access: a read-only file system, or a
    folder of another user; root passes every permission check, so the test cannot make one for real)."""
    def fn(tmp, runs):
        locked = str(path_fn(tmp))
        real = os.access
        os.access = lambda p, mode, **k: False if str(p) == locked and mode & os.W_OK else real(p, mode, **k)
        try:
            return run_script(script_name, argv(tmp, runs))
        finally:
            os.access = real
    return fn


def vgg_like(tmp):
    """A state dict with torchvision VGG16's names and shapes (random values): enough to get past the VGG load."""
    from torchvision.models import vgg
    return saved(tmp / 'vgg.pth', {f'features.{k}': v for k, v in vgg.make_layers(vgg.cfgs['D']).state_dict().items()})


def unreadable_only(tmp):
    folder = tmp / 'images'
    folder.mkdir()
    for i in range(3):
        (folder / f'{i}.png').write_text('not an image')
    return folder


def two_runs_then_a_kill(tmp, runs):
    """A real second run into the folder of a running one is refused; once the first is killed (SIGKILL: no clean-up
    at all), the next run takes its lock over and removes what its writer left."""
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train_ae.py'),
                              *map(str, TINY_AE + ['--max_steps', 100000, '--disc_weight', 0, '--out_dir', tmp / 'o'])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        for _ in range(600):
            if (tmp / 'o' / '.lock').exists():
                break
            assert first.poll() is None, 'the first run ended early'
            threading.Event().wait(0.1)
        second = run_script('train_ae.py', TINY_AE + ['--max_steps', 1, '--out_dir', tmp / 'o'])
        assert second.code != 0 and f'is in use by another run (process {first.pid} on ' in second.message, second.message
    finally:
        first.kill()
        first.wait()
    (tmp / 'o' / f'.ckpt.pt.{first.pid}.partial').write_bytes(b'half a checkpoint')  # as a kill during a save leaves it
    return run_script('train_ae.py', TINY_AE + ['--max_steps', 1, '--out_dir', tmp / 'o', '--overwrite'])


def lock_taken_over_and_debris_gone(tmp, runs, outcome):
    stdout_has('took over the lock of', 'removed')(tmp, runs, outcome)
    assert not [f for f in os.listdir(tmp / 'o') if f.endswith('.partial')], os.listdir(tmp / 'o')


def make_dir(path):
    os.makedirs(path, exist_ok=True)
    return path


LONG = 'x' * 300  # a path component longer than any file system's NAME_MAX (255 bytes)

# -----------------------------------------------------------------------------
# the catalogue

ALL = ('train_ae.py', 'train_ldm.py', 'sample.py', 'eval_fid.py', 'spectrum.py')
CASES = []
# item 12: a bad number stops a script at argument parsing, in argparse's one line: cli.checked is specified by
# test_checked_numbers_are_one_line_at_parsing below, and each script's parser is seen to use it once here
for s, flag, value, pattern in [('train_ae.py', '--image_size', 0, 'must be >= 1, got 0'),
                                ('train_ldm.py', '--sample_steps', 2000, 'must be >= 1 and <= 1000'),  # item 8
                                ('sample.py', '--steps', 2000, 'must be >= 1 and <= 1000, got 2000'),
                                ('eval_fid.py', '--num_real', 0, 'must be >= 1'),
                                ('spectrum.py', '--image_size', 4, 'must be >= 8')]:
    CASES.append(Case(f'{s} {flag} {value}', script(s, flag, value), Error(f'argument {flag}: {pattern}')))
for s in ALL:
    CASES.append(Case(f'{s} --device nonsense', script(s, '--device', 'nonsense'),
                      Error("argument --device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'nonsense'")))
CASES += [
    Case('train_ae --vgg_weights garbage', script('train_ae.py', lambda t, r: TINY_AE + [
        '--lpips_weight', 1, '--vgg_weights', garbage(t, 'vgg.pth'), '--out_dir', t / 'o']), Error('LPIPS weights file .*vgg.pth could not be read as torch weights')),
    Case('LPIPS lin weights garbage', call(lpips_lin_weights_garbage), Error('lin.pth could not be read as torch weights')),
    Case('train_ldm: the final sample grid crashes', call(sample_grid_crashes_after_training), Result()),
    # item 12: --resume with a checkpoint of another kind or another model
    Case('train_ae --resume on an LDM checkpoint', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 5]), Error('is not a train_ae.py checkpoint')),
    Case('train_ldm --resume on an AE checkpoint', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 5]), Error('is not a train_ldm.py checkpoint')),
    Case('train_ae --resume --preset small', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 5, '--preset', 'small']),
        Error('is a kl autoencoder of preset tiny, not the kl one of --preset small')),
    Case('train_ae --resume --regularizer vq', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 5, '--regularizer', 'vq']),
        Error('not the vq one of --preset tiny')),
    Case('train_ldm --resume --model dit', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 5, '--model', 'dit']),
        Error('was trained with .*; resume it with the same --model')),
    Case('train_ae --resume at max_steps', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 1]), Error('already at step 1, and --max_steps is 1')),
    Case('train_ae --resume --overwrite', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--overwrite']), Error('pass one of them')),
    Case('train_ae --resume without a checkpoint', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', t / 'empty', '--resume']), Error('does not exist')),
    # item 5: the autoencoder must be the one the LDM was trained on
    Case('train_ldm --resume --ae f8', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 5, '--ae', r['ae8']]),
        Error(r'\(f8, 4 channels, .*is not the autoencoder .* was trained with \(f4')),
    Case('train_ldm --resume --ae other weights', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 5, '--ae', r['ae4_other']]),
        Error('is not the autoencoder .* was trained with')),
    Case('sample.py --ae f8 for an f4 LDM', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--ae', r['ae8'], '--device', 'cpu', '--out_dir', t / 's']),
        Error('makes f8 latents with 4 channels, but this LDM was trained on f4 latents')),
    Case('sample.py --ae other weights', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--ae', r['ae4_other'], '--device', 'cpu', '--out_dir', t / 's']),
        Error('has other weights than the autoencoder this LDM was trained with')),
    Case('sample.py --labels for an unconditional LDM', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--labels', 'balanced', '--device', 'cpu', '--out_dir', t / 's']),
        Error('this model is unconditional; --classes, --labels and --cfg_scale do not apply')),
    # issue 23: the objective's flags belong to one family, and a checkpoint is sampled by its own family's samplers
    Case('train_ldm --objective flow --learn_sigma', script('train_ldm.py', *TINY_LDM, '--objective', 'flow', '--learn_sigma'),
         Error('--learn_sigma does not apply to --objective flow')),
    Case('train_ldm --objective flow --schedule linear', script('train_ldm.py', *TINY_LDM, '--objective', 'flow', '--schedule',
         'linear'), Error("--schedule is DDPM's noise schedule; --objective flow has its own path")),
    Case('train_ldm --objective v --prediction x0 --time_shift 3', script('train_ldm.py', *TINY_LDM, '--objective', 'v',
         '--prediction', 'x0', '--time_shift', 3), Error(r'--prediction, --time_shift are for --objective flow only; .*\(--objective v\)')),
    Case('train_ldm --objective flow --logit_std 2', script('train_ldm.py', *TINY_LDM, '--objective', 'flow', '--logit_std', 2),
         Error('pass --time_sampling logit_normal too')),
    Case('train_ldm --resume --objective flow on a DDPM run', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 5, '--objective', 'flow']),
        Error("was trained with .*'objective': 'eps'.*; resume it with the same --model, --preset, --objective")),
    Case('train_ldm --resume --time_shift 3 on a flow run', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_flow_dir'], t), '--resume', '--max_steps', 5, '--objective', 'flow', '--time_shift', 3]),
        Error(r'cannot continue the run exactly .*\(time_shift 1.0 -> 3.0\)')),
    Case('sample.py --sampler heun on a DDPM model', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--sampler', 'heun', '--device', 'cpu', '--out_dir', t / 's']),
        Error('--sampler heun is a rectified-flow sampler, but .* was trained with --objective eps; use ddpm or ddim')),
    Case('sample.py --sampler ddim on a flow model', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm_flow'], '--sampler', 'ddim', '--device', 'cpu', '--out_dir', t / 's']),
        Error('--sampler ddim is a DDPM sampler, but .* --objective flow; use euler, heun, sde')),
    Case('sample.py --eta 0 on a flow model', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm_flow'], '--eta', 0, '--device', 'cpu', '--out_dir', t / 's']),
        Error("--eta and --spacing are DDPM's; .* is a rectified-flow model")),
    Case('sample.py --spacing even on a flow model', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm_flow'], '--spacing', 'even', '--device', 'cpu', '--out_dir', t / 's']),
        Error("--eta and --spacing are DDPM's")),
    Case('sample.py --cfg_interval without guidance', script('sample.py', '--cfg_interval', '0,0.5'),
         Error('--cfg_interval limits classifier-free guidance; pass a --cfg_scale other than 1')),
    Case('sample.py --cfg_interval 0.6,0.2', script('sample.py', '--cfg_interval', '0.6,0.2', '--cfg_scale', 2),
         Error('argument --cfg_interval: must be lo,hi with 0 <= lo <= hi <= 1')),
    Case('a checkpoint from before flow', call(checkpoints_before_flow_are_ddpm), Result()),
    # item 14: --resume with changed settings: printed; refused where the run cannot continue exactly
    Case('train_ae --resume --batch_size 4', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 2, '--batch_size', 4]),
        Error('--resume cannot continue the run exactly with another data stream \\(batch_size 2 -> 4\\); .*--allow_changes')),
    Case('train_ae --resume --data folder', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 2, '--data', bad_image_folder(t)]),
        Error(r'another data stream \(data None -> .*images, num_images 2147483647 -> 7\)')),
    Case('train_ldm --resume --seed 1', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 3, '--seed', 1]),
        Error('another data stream \\(seed 0 -> 1\\)')),
    Case('train_ae --resume --batch_size 4 --allow_changes --se_weight 0.25', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--resume', '--max_steps', 2, '--batch_size', 4, '--allow_changes',
        '--se_weight', 0.25]), Result(changed_settings_are_printed('batch_size 2 -> 4', 'se_weight 0.0 -> 0.25'))),
    # item 10: after a kill, the next start removes the half-written checkpoint and the log rows it will redo
    Case('train_ldm --resume after a kill', script('train_ldm.py', prepare_resume_with_debris), Result(resume_cleans_up)),
    Case('disk full while saving a checkpoint', call(no_space_during_checkpoint), Error(r'the disk holding .* is full \(\d+ MB free, about 2 MB are needed\)')),
    Case('disk full while writing', call(no_space_while_logging), Error(r'the disk holding .* is full')),
    Case('sample.py on a full disk', call(on_a_full_disk(Image.Image, 'save', 'sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--num_samples', 1, '--steps', 1, '--device', 'cpu', '--out_dir', t / 's'])),
        Error(r'the disk holding .*/s is full')),
    Case('eval_fid.py on a full disk', call(on_a_full_disk(json, 'dump', 'eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--inception_weights', t / 'absent.pth', '--device', 'cpu', '--num_workers', 0])),
        Error(r'the disk holding .* is full')),
    Case('train_ae.py on a full disk', call(on_a_full_disk(torch, 'save', 'train_ae.py', lambda t, r: TINY_AE + [
        '--max_steps', 1, '--out_dir', t / 'o'])), Error(r'the disk holding .*/o is full')),
    Case('NaN loss with a checkpoint', call(nan_loss(True)), Error(r'non-finite at step 7; nothing was saved after it, so .*ckpt.pt holds the last checkpoint before it \(step 5, ')),
    Case('NaN loss before any checkpoint', call(nan_loss(False)), Error('non-finite at step 7, before any checkpoint was written, so there is nothing to resume')),
    # item 9: outputs of an earlier run are not overwritten without --overwrite
    Case('train_ae into a finished run', script('train_ae.py', lambda t, r: TINY_AE + ['--out_dir', copy_run(r['ae4_dir'], t)]),
         Error('ckpt.pt already exists; pass --resume to continue that run, --overwrite to replace it')),
    Case('train_ae into a folder with config.json and log.jsonl', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', run_without_checkpoint(t, r)]), Error('config.json already exists; pass --overwrite')),
    Case('train_ae --overwrite', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', copy_run(r['ae4_dir'], t), '--overwrite', '--max_steps', 1]), Result(overwrite_starts_a_new_log)),
    Case('sample.py into an existing --out_dir', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--device', 'cpu', '--out_dir', earlier_samples(t)]), Error('000007.png already exists; pass --overwrite')),
    Case('sample.py --overwrite', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--device', 'cpu', '--num_samples', 1, '--steps', 1, '--overwrite', '--out_dir',
        earlier_samples(t)]), Result(overwrite_replaces_every_sample)),
    Case('eval_fid --out existing', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--out', garbage(t, 'm.json')]), Error('m.json already exists; pass --overwrite to replace it, or choose another --out')),
    Case('eval_fid --save_stats existing', script('eval_fid.py', lambda t, r: [
        '--save_stats', garbage(t, 'ref.npz'), '--out', t / 'm.json']), Error('ref.npz already exists; .* another --save_stats')),
    Case('spectrum.py --out_dir with results', script('spectrum.py', lambda t, r: [
        '--out_dir', garbage(t, 'spectrum.json').parent]), Error('spectrum.json already exists; pass --overwrite')),
    # item 1: --seed changes the samples; sample i depends only on (seed, i)
    Case('sample.py --seed 0 / 1', call(different_seeds_differ_and_sample_i_depends_on_seed_and_i), Result()),
    Case('per-sample noise of (seed, i) pairs', call(noise_never_shared_between_seed_index_pairs), Result()),
    # item 13: eval_fid.py
    Case('eval_fid random-bytes npz', script('eval_fid.py', lambda t, r: ['--fake', garbage(t, 'x.npz'), '--device', 'cpu']),
         Error('x.npz could not be read as an .npz file')),
    Case('eval_fid --ae with --image_size 18', script('eval_fid.py', lambda t, r: [
        '--ae', r['ae4'], '--image_size', 18, '--device', 'cpu', '--out', t / 'm.json']), Error('--image_size 18 is not divisible .* factor 4')),
    Case('eval_fid random --inception_weights', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--inception_weights', garbage(t, 'inc.pth'), '--device', 'cpu', '--num_workers', 0]),
        Error('--inception_weights .*inc.pth could not be read as torch weights')),
    # item 6: unreadable files are counted and reported, in eval_fid.py (with and without resizing) and spectrum.py
    Case('eval_fid folder with bad files', script('eval_fid.py', lambda t, r: [
        '--fake', bad_image_folder(t), '--inception_weights', t / 'absent.pth', '--device', 'cpu', '--num_workers', 0,
        '--out', t / 'm.json']), Skip('m.json', 'unreadable_fake', 3)),
    Case('eval_fid folder with bad files, resized', script('eval_fid.py', lambda t, r: [
        '--fake', bad_image_folder(t), '--image_size', 16, '--inception_weights', t / 'absent.pth', '--device', 'cpu',
        '--num_workers', 0, '--out', t / 'm.json']), Skip('m.json', 'unreadable_fake', 3)),
    Case('eval_fid --ref folder with bad files, larger than --fake (so shuffled for SWD)', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t, size=32), '--ref', bad_image_folder(t), '--inception_weights', t / 'absent.pth',
        '--device', 'cpu', '--num_workers', 0, '--out', t / 'm.json']), Skip('m.json', 'unreadable_real', 3)),
    Case('spectrum.py folder with bad files', script('spectrum.py', lambda t, r: [
        '--data', bad_image_folder(t), '--image_size', 16, '--device', 'cpu', '--out_dir', t / 'spec']),
        Skip('spec/spectrum.json', 'unreadable_images', 3)),
    Case('spectrum.py --image_size 34', script('spectrum.py', '--image_size', 34), Error('not a multiple of the 8x8 DCT block; use 32 or 40')),
    Case('EXIF-rotated JPEG', call(exif_rotated_photo_is_upright), Result()),
    Case('dark 16-bit PNG', call(dark_16bit_png_stays_dark), Result()),
    # items 7, 11: link loops and named pipes
    Case('link loop, duplicate link, named pipe', call(link_loop_and_pipe_are_listed_once), Result()),
    Case('spectrum.py on a folder with a link loop and a pipe', script('spectrum.py', prepare_loop_folder), Result(folder_counted_once)),
]


# issue 19, class 1: no file runs code. Every flag that names a weight or checkpoint file, the torch hub cache under the
# names of the three downloads, and a ckpt.pt inside a reproduce.py tree: a pickle that would run code is refused
REFUSED = 'was refused: it holds Python objects \\((builtins\\.)?exec\\)'
CASES += [
    Case('payload: train_ae --resume', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', evil_run(r['ae4_dir'], t), '--resume', '--max_steps', 5]), Refused(REFUSED)),
    Case('payload: train_ae --init_from', script('train_ae.py', lambda t, r: TINY_AE + [
        '--init_from', evil_pickle(t), '--disc_weight', 0, '--out_dir', t / 'o']), Refused(REFUSED)),
    Case('payload: train_ae --vgg_weights', script('train_ae.py', lambda t, r: TINY_AE + [
        '--lpips_weight', 1, '--vgg_weights', evil_pickle(t, like={'w': torch.zeros(1)}), '--out_dir', t / 'o']),
        Refused(REFUSED)),
    Case('payload: train_ae --lpips_lin_weights', script('train_ae.py', lambda t, r: TINY_AE + [
        '--lpips_weight', 1, '--vgg_weights', vgg_like(t), '--lpips_lin_weights', evil_pickle(t, like={'w': torch.zeros(1)}),
        '--out_dir', t / 'o']),
        Refused(REFUSED)),
    Case('payload: train_ldm --ae', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', evil_pickle(t), '--out_dir', t / 'o']), Refused(REFUSED)),
    Case('payload: train_ldm --resume', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', evil_run(r['ldm_dir'], t), '--resume', '--max_steps', 5]), Refused(REFUSED)),
    Case('payload: train_ldm --init_from', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', r['ae4'], '--init_from', evil_pickle(t), '--out_dir', t / 'o']), Refused(REFUSED)),
    Case('payload: sample.py --ckpt', script('sample.py', lambda t, r: [
        '--ckpt', evil_pickle(t), '--device', 'cpu', '--out_dir', t / 's']), Refused(REFUSED)),
    Case('payload: sample.py --ae', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--ae', evil_pickle(t), '--device', 'cpu', '--out_dir', t / 's']), Refused(REFUSED)),
    Case('payload: eval_fid --ae', script('eval_fid.py', lambda t, r: [
        '--ae', evil_pickle(t), '--image_size', 16, '--device', 'cpu', '--out', t / 'm.json']), Refused(REFUSED)),
    Case('payload: eval_fid --inception_weights', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--inception_weights', evil_pickle(t, like={'w': torch.zeros(1)}), '--device', 'cpu',
        '--num_workers', 0]), Refused(REFUSED)),
    Case('payload: eval_fid --i3d_weights', script('eval_fid.py', lambda t, r: [
        '--fake', video_npz(t), '--real', video_npz(t, 'r.npz'), '--i3d_weights', evil_pickle(t, like={'w': torch.zeros(1)}),
        '--device', 'cpu']), Refused(REFUSED)),
    Case('payload: spectrum.py --ckpt', script('spectrum.py', lambda t, r: [
        '--ckpt', evil_pickle(t), '--image_size', 16, '--device', 'cpu', '--out_dir', t / 'spec']), Refused(REFUSED)),
    Case('payload: export.py --ckpt', script('export.py', lambda t, r: [
        '--ckpt', evil_pickle(t), '--format', 'diffusers', '--out', t / 'exp']), Refused(REFUSED)),
    Case('payload: VGG16 in the torch hub cache', call(evil_in_hub_cache('vgg16-397923af.pth', 'train_ae.py', lambda t, r: TINY_AE + [
        '--lpips_weight', 1, '--out_dir', t / 'o'])), Refused(REFUSED + '.* in the torch hub cache|torch hub cache.*' + REFUSED)),
    Case('payload: Inception in the torch hub cache', call(evil_in_hub_cache('pt_inception-2015-12-05-6726825d.pth', 'eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--device', 'cpu', '--num_workers', 0])), Refused(REFUSED)),
    Case('payload: I3D in the torch hub cache', call(evil_in_hub_cache('i3d_pretrained_400.pt', 'eval_fid.py', lambda t, r: [
        '--fake', video_npz(t), '--real', video_npz(t, 'r.npz'), '--device', 'cpu'])), Refused(REFUSED)),
    Case('payload: ckpt.pt in a reproduce.py tree', call(evil_in_reproduce_tree), Refused(REFUSED)),
]

# class 2: one run per folder (an exclusive lock naming pid and host), ckpt.pt and ema.pt at one step, no debris, and
# a latent cache that neither two runs build at once nor moves the run's random stream
CASES += [
    Case('train_ae into a folder another run is writing', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', live_lock(t / 'o')]), Error(r'--out_dir .*/o is in use by another run \(process \d+ on ')),
    Case('train_ldm --resume of a run that is still going', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', live_lock(copy_run(r['ldm_dir'], t)), '--resume', '--max_steps', 5]), Error('is in use by another run')),
    Case('train_ldm building a cache another run builds', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', r['ae4'], '--cache_latents', live_lock(t / 'cache'), '--cache_size', 4, '--out_dir', t / 'o']),
        Error(r'--cache_latents .*/cache is in use by another run')),
    Case('sample.py into a folder another host writes', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--device', 'cpu', '--out_dir', live_lock(t / 's', host='elsewhere')]),
        Error(r'in use by another run \(process \d+ on elsewhere, which runs `a command not recorded`\); .*delete .*\.lock')),
    Case('two train_ae runs at once, then the first killed', call(two_runs_then_a_kill),
         Result(lock_taken_over_and_debris_gone)),
    Case('train_ae over the lock of a killed run', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', dead_lock(t / 'o'), '--max_steps', 1]),
        Result(stdout_has('took over the lock of', 'which no longer runs'))),
    Case('sample.py --ckpt ema.pt older than ckpt.pt', script('sample.py', ema_behind_ckpt),
         Error(r'ema.pt holds the EMA weights of step 1, and .*ckpt.pt beside it is at step 2: the run was stopped')),
    Case('latent cache built or found: the same training', call(cache_does_not_move_the_run), Result()),
]

# class 3: one listing of a folder (hidden files and other types left out and counted), unreadable files counted by
# every reader (the latent cache leaves them out), and no metric of an empty, mismatched or non-finite set
CASES += [
    Case('train_ldm --cache_latents with unreadable images', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', r['ae4'], '--data', bad_image_folder(t, good=5), '--cache_latents', t / 'cache', '--max_steps', 1,
        '--out_dir', t / 'o']), Result(cache_leaves_unreadable_out)),
    Case('eval_fid folder with a hidden folder, a GIF and a TIFF', script('eval_fid.py', lambda t, r: [
        '--fake', folder_with(t, ['.ipynb_checkpoints/good0.png', 'x.gif', 'y.tif']), '--inception_weights',
        t / 'absent.pth', '--device', 'cpu', '--num_workers', 0, '--out', t / 'm.json']),
        Result(json_has('m.json', num_fake=4, left_out_fake={'.gif': 1, '.tif': 1, 'hidden': 1}))),
    Case('spectrum.py folder with GIFs beside PNGs', script('spectrum.py', lambda t, r: [
        '--data', folder_with(t, ['a.gif', 'b.gif']), '--image_size', 16, '--device', 'cpu', '--out_dir', t / 'spec']),
        Result(json_has('spec/spectrum.json', num_images=4, left_out_files={'.gif': 2}))),
    Case('train_ae --data with GIFs only', script('train_ae.py', lambda t, r: TINY_AE + [
        '--data', folder_with(t, ['a.gif', 'b.gif'], good=0), '--out_dir', t / 'o']),
        Error(r'holds no images \(the types read are .jpg, .*\), searched recursively; it holds 2 .gif files')),
    Case('eval_fid video folder with a broken video', script('eval_fid.py', lambda t, r: [
        '--fake', video_folder(t), '--real', video_folder(t / 'x' if make_dir(t / 'x') else t, bad=0),
        '--image_size', 16, '--num_frames', 4, '--i3d_weights', t / 'absent.pt', '--device', 'cpu', '--out', t / 'm.json']),
        Result(json_has('m.json', num_fake=2, unreadable_fake=1, unreadable_real=0))),
    Case('spectrum.py --num_frames with a broken video', script('spectrum.py', lambda t, r: [
        '--data', video_folder(t), '--num_frames', 5, '--image_size', 16, '--device', 'cpu', '--out_dir', t / 'spec']),
        Result(json_has('spec/spectrum_video.json', num_clips=3, unreadable_clips=1))),
    Case('eval_fid statistics with NaN', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--real', saved_npz(t, mu=np.full(2048, np.nan), sigma=np.eye(2048)), '--device', 'cpu']),
        Error('hold NaN or infinite values; make them again with --save_stats')),
    Case('eval_fid statistics of another dimension', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--real', saved_npz(t, mu=np.zeros(64), sigma=np.eye(64)), '--device', 'cpu']),
        Error('the --ref statistics are 64-d, not the 2048 Inception pool3 features')),
    Case('eval_fid empty npz', script('eval_fid.py', lambda t, r: [
        '--fake', saved_npz(t, arr_0=np.zeros((0, 16, 16, 3), np.uint8)), '--device', 'cpu']),
        Error(r'holds no images \(arr_0 is \(0, 16, 16, 3\)\)')),
    Case('eval_fid 64 px npz with --image_size 32', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t, size=64), '--image_size', 32, '--device', 'cpu']),
        Error(r'holds 64x64 images, and --image_size is 32 \(it resizes folders, never an .npz\)')),
]

# class 4: every output path is checked before any work
CASES += [
    Case('train_ae --out_dir that is a file', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', garbage(t, 'f')]), Error(r'--out_dir .*/f is a file, and a folder is needed')),
    Case('train_ldm --out_dir with a 300-character name', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', t / LONG / 'o']), Error(r"the name 'x+\.\.\.' is 300 bytes long, and the file system allows 255")),
    Case('eval_fid --out in a folder that does not exist', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--inception_weights', t / 'absent.pth', '--device', 'cpu', '--num_workers', 0,
        '--out', t / 'new' / 'deeper' / 'm.json']), Result(json_has('new/deeper/m.json', num_fake=4))),
    Case('eval_fid --out in a read-only folder', call(read_only(lambda t: make_dir(t / 'ro'), 'eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--device', 'cpu', '--out', t / 'ro' / 'm.json'])), Error(r'--out .*/ro/m.json cannot be written: .*/ro is read-only')),
    Case('eval_fid --save_stats under a file', script('eval_fid.py', lambda t, r: [
        '--real', samples_npz(t), '--save_stats', garbage(t, 'f') / 'ref.npz', '--out', t / 'm.json']),
        Error(r'--save_stats .*/f/ref.npz cannot be made: .*/f is a file')),
    Case('sample.py --out_dir on a read-only file system', call(read_only(lambda t: t, 'sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--device', 'cpu', '--out_dir', t / 's'])), Error(r'--out_dir .*/s cannot be written')),
    Case('spectrum.py --out_dir under a file', script('spectrum.py', lambda t, r: [
        '--out_dir', garbage(t, 'f') / 'spec']), Error(r'cannot be made: .*/f is a file, not a folder')),
    Case('train_ae --out_dir inside --data', script('train_ae.py', lambda t, r: TINY_AE + [
        '--data', folder_with(t, []), '--out_dir', t / 'images' / 'run']),
        Error(r'--out_dir .*/images/run lies inside --data .*/images: its files would overwrite or mix with what is read')),
    Case('eval_fid --out onto its --fake', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--out', t / 'fake.npz', '--overwrite']), Error(r'--out .*fake.npz is --fake')),
    Case('export.py --out onto its --ckpt', script('export.py', lambda t, r: [
        '--ckpt', r['ae4'], '--format', 'flux', '--out', r['ae4'], '--overwrite']), Error(r'--out .*ckpt.pt is --ckpt')),
    Case('export.py --out with a 300-character name', script('export.py', lambda t, r: [
        '--ckpt', r['ae4'], '--format', 'diffusers', '--out', t / LONG]), Error('is 300 bytes long')),
]

# class 5: a file of the wrong shape, a damaged cache, guidance the model cannot do, a die() in a data worker: one
# sentence each; and what a resume or a video run gets by default
CASES += [
    Case('train_ae --resume on a tensor', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', t / 'o', '--resume'] if saved(t / 'o' / 'ckpt.pt', torch.zeros(3)) else []),
        Error(r'ckpt.pt is not a train_ae.py checkpoint: it is a Tensor, not a dict')),
    Case('sample.py --ckpt holding a list', script('sample.py', lambda t, r: [
        '--ckpt', saved(t / 'l.pt', [1, 2]), '--device', 'cpu', '--out_dir', t / 's']),
        Error(r'l.pt is not a train_ldm.py checkpoint .*: it is a list, not a dict')),
    Case('sample.py --ckpt whose config is a string', script('sample.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ldm'], t / 'c.pt', config='x'), '--device', 'cpu', '--out_dir', t / 's']),
        Error(r"its 'config' is a string, not a dict")),
    Case('train_ldm --ae with a list of tensors', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', saved(t / 'l.pt', [torch.zeros(1)]), '--out_dir', t / 'o']), Error(r'holds no autoencoder weights: it is a list')),
    Case('spectrum.py --ckpt whose model is a list', script('spectrum.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ae4'], t / 'c.pt', model=[1]), '--image_size', 16, '--device', 'cpu',
        '--out_dir', t / 'spec']), Error(r"is not a train_ae.py checkpoint: its 'model' is a list, not a state dict")),
    Case('export.py --ckpt whose ae_config is nonsense', script('export.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ae4'], t / 'c.pt', config={'preset': 'tiny', 'ae_config': {'ch': 'x'}}),
        '--format', 'diffusers', '--out', t / 'exp']), Error('describes no autoencoder that can be built')),
    Case('latent cache with meta.json cut short', call(damaged_cache(
        lambda c: (c / 'meta.json').write_text((c / 'meta.json').read_text()[:20]))), Result()),
    Case('latent cache without labels.npy', call(damaged_cache(lambda c: os.remove(c / 'labels.npy'))), Result()),
    Case('latent cache with latents.npy cut short', call(damaged_cache(
        lambda c: os.truncate(c / 'latents.npy', 500))), Result()),
    Case('sample.py --cfg_scale without label dropout', script('sample.py', lambda t, r: [
        '--ckpt', ldm_with_classes(t, r, 0.0), '--cfg_scale', 2, '--device', 'cpu', '--out_dir', t / 's']),
        Error('was trained with --class_dropout_prob 0; sample it with --cfg_scale 1')),
    Case('sample.py --cfg_channels above the channels', script('sample.py', lambda t, r: [
        '--ckpt', ldm_with_classes(t, r, 0.1), '--cfg_scale', 2, '--cfg_channels', 10, '--device', 'cpu',
        '--out_dir', t / 's']), Error(r"--cfg_channels 10 is more than the model's 4 latent channels")),
    Case('eval_fid: a die() in a data loader worker', script('eval_fid.py', lambda t, r: [
        '--fake', unreadable_only(t), '--image_size', 16, '--num_workers', 1, '--device', 'cpu',
        '--out', t / 'm.json']), Error(r'none of the 3 images under .* could be read')),
    Case('train_ldm --resume prints no unchanged settings', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', copy_run(r['ldm_dir'], t), '--resume', '--max_steps', 3, '--ema_decay', 0.5]),
        Result(stdout_has(absent=['resuming with changed settings']))),
    Case('train_ldm --init_from ema.pt', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', r['ae4'], '--init_from', r['ldm_dir'] / 'ema.pt', '--max_steps', 1, '--out_dir', t / 'o']), Result()),
    Case('train_ldm --num_frames 5 chooses the video DiT', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--num_frames', 5, '--ae', r['ae4'], '--out_dir', t / 'o']), Error(r'is an image autoencoder')),
    Case('sample.py --ckpt whose latent_size is 0', script('sample.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ldm'], t / 'c.pt', config=backbone_edit(r['ldm'], latent_size=0)), '--device',
        'cpu', '--out_dir', t / 's']), Error(r"its 'config'\['backbone'\]\['latent_size'\] is 0, not a positive integer")),
    Case('sample.py --ckpt with an unknown schedule', script('sample.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ldm'], t / 'c.pt', config={**torch.load(r['ldm'], weights_only=True)['config'],
                                                                   'schedule': 'zzz'}), '--device', 'cpu', '--out_dir',
        t / 's']), Error("describe no model that can be built .*unknown noise schedule 'zzz'")),
    Case('train_ldm --resume at step -3', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', edited_run(r['ldm_dir'], t, step=-3), '--resume', '--max_steps', 5]), Error("its 'step' is below 0")),
    Case('train_ldm --resume with RNG states of nonsense', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', edited_run(r['ldm_dir'], t, rng=[{'python': [1], 'numpy': [], 'torch': torch.zeros(2)}]),
        '--resume', '--max_steps', 5]), Error('the RNG states in .*ckpt.pt are not ones this project writes')),
    Case('eval_fid statistics whose sigma is no covariance', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--real', saved_npz(t, mu=np.zeros(2048), sigma=-np.eye(2048)), '--device', 'cpu']),
        Error('is no covariance')),
    Case('eval_fid one-frame videos', script('eval_fid.py', lambda t, r: [
        '--fake', video_npz(t, frames=1), '--real', video_npz(t, 'r.npz', frames=1), '--i3d_weights', t / 'absent.pt',
        '--device', 'cpu', '--out', t / 'm.json']), Result(lambda t, r, o: json.load(open(t / 'm.json'))['skipped']['video_swd'])),
    Case('train_ae --data with hidden files only', script('train_ae.py', lambda t, r: TINY_AE + [
        '--data', folder_with(t, ['.a.png', '.ipynb_checkpoints/b.png'], good=0), '--out_dir', t / 'o']),
        Error('holds no images .*; it holds 2 hidden files or folders')),
    Case('train_ldm --cache_latents inside its own --out_dir', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', r['ae4'], '--cache_latents', t / 'o', '--cache_size', 4, '--max_steps', 1, '--out_dir', t / 'o']), Result()),
    Case('eval_fid --i3d_weights for images', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--i3d_weights', t / 'i3d.pt', '--device', 'cpu']),
        Error('--i3d_weights only applies to videos')),
    Case('train_ae --frame_stride on images', script('train_ae.py', '--frame_stride', 2),
         Error('--frame_stride only applies to video .*, and this run would ignore it; drop it')),
    Case('sample.py --cfg_channels without guidance', script('sample.py', '--cfg_channels', 3),
         Error('--cfg_channels only applies with --cfg_scale other than 1')),
]

# -----------------------------------------------------------------------------
# issue 33: nothing a user owns is touched, a diverged run never looks finished, every folder a run writes is one run's


def ckpt_tensors(ckpt, *keys):
    """The tensors of a checkpoint's state dicts `keys` (an optimizer's state included)."""
    def walk(obj):
        if torch.is_tensor(obj):
            return [obj]
        if isinstance(obj, dict):
            return [t for v in obj.values() for t in walk(v)]
        if isinstance(obj, (list, tuple)):
            return [t for v in obj for t in walk(v)]
        return []
    return [t for k in keys for t in walk(ckpt[k])]


def diverged_run_is_never_saved(script_name, argv, keys):
    """lr 1e10, a checkpoint at every step: after step 1 the weights are huge but finite (a finished run, saved); in
    step 2 the optimizer state (the LDM) or the loss (the AE) becomes infinite, and a run of 2 or 20 steps stops there
    in one sentence naming the step and the step-1 checkpoint, which stays on disk as the 1-step run wrote it."""
    def fn(tmp, runs):
        base = argv(runs) + ['--lr', 1e10, '--ckpt_interval', 1]
        one = run_script(script_name, base + ['--max_steps', 1, '--out_dir', tmp / 'one'])
        assert one.code == 0, one.message
        first = torch.load(tmp / 'one' / 'ckpt.pt', weights_only=True)
        assert common.all_finite(ckpt_tensors(first, *keys))
        for n in (2, 20):
            o = run_script(script_name, base + ['--max_steps', n, '--out_dir', tmp / f'r{n}'])
            assert o.code != 0 and re.fullmatch(
                r"error: the (weights or the optimizer state|loss) became non-finite( \(NaN or inf\))? at step 2; nothing was "
                r"saved after it, so .*/r\d+/ckpt.pt holds the last checkpoint before it \(step 1, finite and "
                r"untouched; .*\)\.", o.message), o.message
            kept = torch.load(tmp / f'r{n}' / 'ckpt.pt', weights_only=True)
            assert kept['step'] == 1 and all(torch.equal(a, b) for a, b in zip(ckpt_tensors(kept, *keys),
                                                                                 ckpt_tensors(first, *keys)))
            assert 'done at step' not in o.stdout
    return fn


def with_nan(ckpt_path, key):
    """The state dict `key` of a checkpoint with its first float tensor NaN."""
    state = dict(torch.load(ckpt_path, weights_only=True)[key])
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float('nan'))
    return state


def user_files_survive_every_lock(tmp, runs):
    """Files a user named like temporaries, planted in every kind of folder a script locks, survive the lock's
    clean-up; a partial file of a dead writer beside them (rundir.partial_path's name) is removed."""
    dead = dead_pid()

    def plant(folder, partial_of='ckpt.pt'):
        plant_user_files(folder)
        (folder / f'.{partial_of}.{dead}.partial').write_bytes(b'half a file')
        return folder
    folders = {'train_ae': plant(tmp / 'ae'), 'train_ldm': plant(tmp / 'ldm'), 'cache': plant(tmp / 'cache', 'meta.json'),
               'sample': plant(tmp / 'samples', 'samples.npz'), 'spectrum': plant(tmp / 'spec', 'spectrum.json'),
               'eval_fid': plant(tmp / 'scores', 'm.json'), 'export': plant(tmp / 'export', 'config.json'),
               'reproduce': plant(tmp / 'rep', 'report.json')}
    for name, argv in [
            ('train_ae.py', TINY_AE + ['--max_steps', 1, '--out_dir', folders['train_ae']]),
            ('train_ldm.py', TINY_LDM + ['--ae', runs['ae4'], '--max_steps', 1, '--cache_latents', folders['cache'],
                                         '--cache_size', 4, '--out_dir', folders['train_ldm']]),
            ('sample.py', ['--ckpt', runs['ldm'], '--num_samples', 1, '--steps', 1, '--device', 'cpu',
                           '--out_dir', folders['sample']]),
            ('spectrum.py', ['--image_size', 16, '--num_images', 2, '--device', 'cpu', '--out_dir', folders['spectrum']]),
            ('eval_fid.py', ['--fake', samples_npz(tmp), '--inception_weights', tmp / 'absent.pth', '--device', 'cpu',
                             '--num_workers', 0, '--out', folders['eval_fid'] / 'm.json']),
            ('export.py', ['--ckpt', runs['ae4'], '--format', 'diffusers', '--out', folders['export'], '--overwrite'])]:
        o = run_script(name, argv)
        assert o.code == 0, (name, o.message)
    stand_in_children(lambda: run_script('repro/reproduce.py', ['--smoke', '--seeds', 1, '--out_dir', folders['reproduce']]))
    for name, folder in folders.items():
        left = set(os.listdir(folder))
        assert set(USER_FILES) <= left, (name, sorted(left))
        assert not [f for f in left if f.endswith('.partial') and str(dead) in f], (name, sorted(left))


def stand_in_children(fn):
    """fn() with every script that reproduce.py starts replaced by one that fails at once (no training)."""
    class Failed:
        returncode = 1

        def poll(self):
            return 1

        def wait(self, timeout=None):
            return 1
    real = subprocess.Popen
    subprocess.Popen = lambda cmd, *a, **k: Failed() if any(str(c).endswith('.py') for c in cmd) else real(cmd, *a, **k)
    try:
        return fn()
    finally:
        subprocess.Popen = real


def hard_link(src, dst):
    os.link(src, dst)
    return dst


def raw_pickle(tmp):
    """A file written by pickle.dump (not torch.save) whose loading would run the payload."""
    import pickle
    with open(tmp / 'raw.pt', 'wb') as f:
        pickle.dump({'model': {}, 'payload': Payload(tmp / MARKER)}, f)
    return tmp / 'raw.pt'


def safetensors_with_config(tmp, runs, **config):
    """ae4's weights as a .safetensors file whose metadata records a train_ae.py config (as reproduce.py --pretrain)."""
    from safetensors.torch import save_file
    ckpt = torch.load(runs['ae4'], weights_only=True)
    meta = {'preset': 'tiny', 'ae_config': ckpt['config']['ae_config'], 'num_frames': 1, **config}
    save_file(ckpt['model'], str(tmp / 'ae.safetensors'), metadata={'config': json.dumps(meta)})
    return tmp / 'ae.safetensors'


def inception_weights(tmp):
    from evaluation.inception import InceptionV3FID
    return saved(tmp / 'inception.pth', InceptionV3FID().state_dict())


def full_disk_in_torch_zip_writer(tmp, runs):
    """torch.save's zip writer reports a full disk as a RuntimeError ('unexpected pos'), not ENOSPC."""
    import shutil as sh
    path = tmp / 'ckpt.pt'
    torch.save({'old': 1}, path)
    real_save, real_usage = torch.save, sh.disk_usage

    def full(obj, f):
        f.write(b'partial')
        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 576 vs 470')
    torch.save, sh.disk_usage = full, lambda p: real_usage(p)._replace(free=3 * 2 ** 20 // 2)
    try:
        common.save_checkpoint({'w': torch.zeros(2 ** 19)}, path)  # 2 MB
    finally:
        torch.save, sh.disk_usage = real_save, real_usage
        assert torch.load(path) == {'old': 1} and os.listdir(tmp) == ['ckpt.pt']  # the old one, and no partial


def exported_files_take_the_umask(tmp, runs):
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            o = run_script('export.py', ['--ckpt', runs['ae4'], '--format', 'diffusers', '--out', tmp / f'e{umask:o}'])
        finally:
            os.umask(old)
        assert o.code == 0, o.message
        for path in [tmp / f'e{umask:o}' / n for n in ('diffusion_pytorch_model.safetensors', 'config.json')]:
            assert os.stat(path).st_mode & 0o777 == mode, (path, oct(os.stat(path).st_mode), oct(mode))


def preset_changed_since(tmp, runs):
    """ae4's run whose checkpoint records another width than preset tiny's today (a preset edited between runs)."""
    ckpt = torch.load(runs['ae4'], weights_only=True)
    config = {**ckpt['config'], 'ae_config': {**ckpt['config']['ae_config'], 'ch': 64}}
    return edited_run(runs['ae4_dir'], tmp, config=config)


def images(folder, n, seed=0, size=16):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f'{seed}_{i}.png')
    return folder


def copy_of_a_training_image(tmp, runs):
    train, held = images(tmp / 'a', 3), images(tmp / 'b', 2, seed=1)
    shutil.copyfile(train / '0_1.png', held / 'renamed.png')
    return ['--smoke', '--seeds', 1, '--data', train, '--val_data', held, '--out_dir', tmp / 'rep']


CASES += [
    # item 2: a checkpoint is only saved from finite weights
    Case('train_ldm --lr 1e10 at 1, 2 and 20 steps', call(diverged_run_is_never_saved(
        'train_ldm.py', lambda r: TINY_LDM + ['--ae', r['ae4']], ('model', 'ema', 'opt'))), Result()),
    Case('train_ae --lr 1e10 at 1, 2 and 20 steps', call(diverged_run_is_never_saved(
        'train_ae.py', lambda r: TINY_AE + ['--disc_weight', 0], ('model', 'opt_g'))), Result()),
    Case('train_ldm --resume from non-finite weights', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--out_dir', edited_run(r['ldm_dir'], t, model=with_nan(r['ldm'], 'model')), '--resume', '--max_steps', 5]),
        Error(r'ckpt.pt holds weights or optimizer state that are not finite \(NaN or inf\): its run diverged, so it '
              r'cannot be resumed')),
    Case('train_ae --resume from non-finite weights', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', edited_run(r['ae4_dir'], t, model=with_nan(r['ae4'], 'model')), '--resume', '--max_steps', 5]),
        Error('holds weights or optimizer state that are not finite')),
    Case('sample.py --ckpt with non-finite EMA weights', script('sample.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ldm'], t / 'c.pt', ema=with_nan(r['ldm'], 'ema')), '--device', 'cpu',
        '--out_dir', t / 's']), Error(r'the EMA weights in .*c.pt are not finite \(NaN or inf\): its run diverged')),
    Case('sample.py with samples that come out non-finite', script('sample.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ldm'], t / 'c.pt', latent_scale=1e-45), '--num_samples', 2, '--steps', 1,
        '--device', 'cpu', '--out_dir', t / 's']),
        Error(r'samples 0\.\.1 came out non-finite \(NaN or inf\): .*nothing more was written')),
    # item 1: a lock removes only its writers' partial files, of dead writers, in every kind of locked folder
    Case("a user's files named like temporaries, in every locked folder", call(user_files_survive_every_lock), Result()),
    # item 3: every folder a run writes is one run's
    Case('reproduce.py --baselines beyond the shipped ones', script('repro/reproduce.py', lambda t, r: [
        '--baselines', 5, '--out_dir', t / 'rep']), Error(r'--baselines 5: 3 image baseline\(s\) are shipped; make more')),
    Case('reproduce.py --ablations with an unknown arm', script('repro/reproduce.py', lambda t, r: [
        '--ablations', 'se_detach,magic', '--out_dir', t / 'rep']), Error(r'--ablations knows se_detach, .* not magic')),
    Case('reproduce.py --dataset shapes with --data', script('repro/reproduce.py', lambda t, r: [
        '--dataset', 'shapes', '--data', t, '--baseline', r['ae4'], '--out_dir', t / 'rep']),
        Error(r'--dataset shapes is an embedded image set; drop --data')),
    Case('reproduce.py into a folder another run is writing', script('repro/reproduce.py', lambda t, r: [
        '--smoke', '--seeds', 1, '--out_dir', live_lock(t / 'rep')]), Error(r'--out_dir .*/rep is in use by another run')),
    Case('eval_fid --out that another evaluation writes', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--out', live_file_lock(t / 'm.json')]),
        Error(r'--out .*/m.json is in use by another run \(process \d+ on ')),
    Case('eval_fid --save_stats that another evaluation writes', script('eval_fid.py', lambda t, r: [
        '--real', samples_npz(t), '--save_stats', live_file_lock(t / 'ref.npz'), '--out', t / 'm.json']),
        Error(r'--save_stats .*/ref.npz is in use by another run')),
    Case('export.py --out that another export writes', script('export.py', lambda t, r: [
        '--ckpt', r['ae4'], '--format', 'diffusers', '--out', live_lock(t / 'e')]), Error(r'--out .*/e is in use by another run')),
    # item 4: overlap checks on files, for every script with an input and an output
    Case('export.py --ckpt inside its --out --overwrite', script('export.py', lambda t, r: [
        '--ckpt', safetensors_with_config(t, r), '--format', 'diffusers', '--out', t, '--overwrite']),
        Error(r'--out .* holds --ckpt .*ae.safetensors: its files would overwrite')),
    Case('train_ae --init_from inside its --out_dir', script('train_ae.py', lambda t, r: TINY_AE + [
        '--init_from', copy_run(r['ae4_dir'], t, 'o') / 'ckpt.pt', '--disc_weight', 0, '--out_dir', t / 'o', '--overwrite']),
        Error(r'--out_dir .*/o holds --init_from .*/o/ckpt.pt')),
    Case('train_ldm --ae inside its --out_dir', script('train_ldm.py', lambda t, r: TINY_LDM + [
        '--ae', copy_run(r['ae4_dir'], t, 'o') / 'ckpt.pt', '--out_dir', t / 'o', '--overwrite']),
        Error(r'--out_dir .*/o holds --ae .*/o/ckpt.pt')),
    Case('sample.py --ckpt inside its --out_dir', script('sample.py', lambda t, r: [
        '--ckpt', r['ldm'], '--device', 'cpu', '--out_dir', r['ldm_dir']]), Error(r'--out_dir .*/ldm holds --ckpt')),
    Case('spectrum.py --ckpt inside its --out_dir', script('spectrum.py', lambda t, r: [
        '--ckpt', r['ae4'], '--image_size', 16, '--device', 'cpu', '--out_dir', r['ae4_dir']]),
        Error(r'--out_dir .*/ae4 holds --ckpt')),
    Case('eval_fid --out a hard link of --fake', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--out', hard_link(t / 'fake.npz', t / 'm.json'), '--overwrite']),
        Error(r'--out .*m.json is --fake')),
    Case('eval_fid --out onto its --inception_weights', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t), '--inception_weights', garbage(t, 'w.pth'), '--out', t / 'w.pth', '--overwrite']),
        Error(r'--out .*w.pth is --inception_weights')),
    Case('reproduce.py --baseline inside its --out_dir', script('repro/reproduce.py', lambda t, r: [
        '--baseline', copy_run(r['ae4_dir'], t, 'rep') / 'ckpt.pt', '--out_dir', t / 'rep']),
        Error(r'--out_dir .*/rep holds --baseline')),
    # item 5: the protocol's own contradictions
    Case('reproduce.py --val_data the same as --data', script('repro/reproduce.py', lambda t, r: [
        '--smoke', '--data', images(t / 'd', 3), '--val_data', t / 'd', '--out_dir', t / 'rep']),
        Error(r'--val_data .*/d is --data .*/d: held-out images would be training images')),
    Case('reproduce.py --val_data inside --data', script('repro/reproduce.py', lambda t, r: [
        '--smoke', '--data', images(t / 'd', 3), '--val_data', images(t / 'd' / 'held', 2), '--out_dir', t / 'rep']),
        Error(r'--val_data .*/held overlaps --data')),
    Case('reproduce.py --val_data holding a copy of a training image', script('repro/reproduce.py', copy_of_a_training_image),
         Error(r'renamed.png of --val_data is also a training image \(.*0_1.png of --data holds the same bytes\)')),
    Case('sample.py --labels balanced with 3 samples of 2 classes', script('sample.py', lambda t, r: [
        '--ckpt', ldm_with_classes(t, r, 0.1), '--labels', 'balanced', '--num_samples', 3, '--device', 'cpu',
        '--out_dir', t / 's']), Error(r'--num_samples 3 is not a multiple of 2; pass 4, or --labels random')),
    Case('safetensors metadata with num_frames -5', script('export.py', lambda t, r: [
        '--ckpt', safetensors_with_config(t, r, num_frames=-5), '--format', 'diffusers', '--out', t / 'e']),
        Error(r"its 'num_frames' is -5, not a positive integer")),
    Case('sample.py --ckpt whose latent_size is 1e6', script('sample.py', lambda t, r: [
        '--ckpt', edited_checkpoint(r['ldm'], t / 'c.pt', config=backbone_edit(r['ldm'], latent_size=10 ** 6)),
        '--device', 'cpu', '--out_dir', t / 's']),
        Error(r"\['latent_size'\] is 1000000, beyond any size this project makes \(at most 16384\)")),
    # item 6: sentences that say what happened
    Case('eval_fid on one image', script('eval_fid.py', lambda t, r: [
        '--fake', samples_npz(t, n=1), '--ref', saved_npz(t, arr_0=np.zeros((3, 16, 16, 3), np.uint8)),
        '--inception_weights', inception_weights(t), '--device', 'cpu', '--num_workers', 0, '--out', t / 'm.json']),
        Error(r'FID is a Frechet distance, which needs at least 2 images in each set \(their covariance\), and --fake '
              r'has 1')),
    Case('disk full inside torch.save', call(full_disk_in_torch_zip_writer),
         Error(r'the disk holding .* is full \(\d+ MB free, about 2 MB are needed\)')),
    Case('train_ae --resume after a preset changed', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', preset_changed_since(t, r), '--resume', '--max_steps', 5]),
        Error(r'not the kl one of --preset tiny \(ch 64 in it, 32 here\); resume with the flags')),
    Case('train_ae --image_size 30 without SE', script('train_ae.py', lambda t, r: TINY_AE + [
        '--image_size', 30, '--out_dir', t / 'o']),
        Error(r"--image_size 30 must be divisible by the autoencoder's downsampling factor 4\.$")),
    Case('sample.py --ckpt a raw pickle', script('sample.py', lambda t, r: [
        '--ckpt', raw_pickle(t), '--device', 'cpu', '--out_dir', t / 's']),
        Refused(r"raw.pt was refused: it is a pickle that torch's safe reader cannot follow .*could run code")),
    Case('a stale lock naming an unrelated live process', script('train_ae.py', lambda t, r: TINY_AE + [
        '--out_dir', live_lock(t / 'o')]),
        Error(r'in use by another run \(process \d+ on \S+, which runs `.+`\); .*if process \d+ is no run of this '
              r'project, delete .*/o/\.lock')),
    Case('exported files take the umask', call(exported_files_take_the_umask), Result()),
]


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, runs, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders (out/...) land in the test's own folder
    outcome = case.run(tmp_path, runs)
    case.expect.check(outcome, tmp_path, runs)


def test_checked_numbers_are_one_line_at_parsing():
    """cli.checked and cli.int_list, the argparse types of every numeric flag, and cli.device, that of --device: a value
    out of its range, NaN, inf, not a number or not a device stops the parse with argparse's one line naming the flag
    and the rule; a good one parses."""
    import argparse
    rules = [(cli.checked(int, lo=1), [('0', 'must be >= 1, got 0'), ('-8', 'must be >= 1, got -8'),
                                       ('x', "expected an integer, got 'x'"), ('2.5', 'expected an integer')], ('7', 7)),
             (cli.checked(float, lo=0, lo_open=True), [('0', 'must be > 0, got 0'), ('-1', 'must be > 0'),
                                                       ('nan', 'must be > 0, got nan'), ('inf', 'must be > 0, got inf')],
              ('1e-4', 1e-4)),
             (cli.checked(float, lo=0, hi=1, hi_open=True), [('1', 'must be >= 0 and < 1, got 1'), ('1.5', '< 1'),
                                                             ('-0.1', 'must be >= 0')], ('0.9999', 0.9999)),
             (cli.checked(int, lo=1, hi=1000), [('2000', 'must be >= 1 and <= 1000, got 2000'), ('0', '>= 1')],
              ('1000', 1000)),
             (cli.int_list(2), [('a', "expected comma-separated integers such as '2,4', got 'a'"),
                                ('2,1', "every value must be >= 2, got '2,1'")], ('2,4', [2, 4])),
             (cli.device, [('nonsense', "expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'nonsense'"),
                           ('cuda:x', "got 'cuda:x'"), ('mps', "got 'mps'")], ('cuda:1', 'cuda:1'))]
    for kind, bad, (text, value) in rules:
        parser = argparse.ArgumentParser(prog='script.py', allow_abbrev=False)
        parser.add_argument('--x', type=kind)
        assert parser.parse_args(['--x', text]).x == value
        for text, words in bad:
            err = io.StringIO()
            with pytest.raises(SystemExit) as e, redirect_stderr(err):
                parser.parse_args(['--x', text])
            lines = err.getvalue().strip().splitlines()
            assert e.value.code == 2 and lines[-1].startswith('script.py: error: argument --x: ') and words in lines[-1]

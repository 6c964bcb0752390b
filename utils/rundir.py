"""
Run-folder safety, written once for every script: an output is checked before any work (check_output), kept apart
from the inputs (refuse_overlap), held by one run alone (lock_folder, with the take-over of a killed run's lock), never
overwritten without --overwrite (refuse_to_overwrite), and a full disk is one sentence (no_space_is_an_error). Nothing
here imports torch.
"""
import os
import re
import sys
import time
import errno
import shutil
import contextlib

from utils.cli import die


def check_run_dir(out_dir, resume, overwrite, inputs):
    """A training run's --out_dir, checked and locked before anything is built: it must be a folder this user can
    write (check_output) apart from the `inputs` it reads ([(path or None, flag)]: refuse_overlap), no other run may be
    writing into it (lock_folder, rank 0 for all ranks), a new run refuses to mix its files with another run's (unless
    --overwrite), a resumed one needs its checkpoint. -> the checkpoint path."""
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    if resume and overwrite:
        die("--resume continues the run in --out_dir and --overwrite replaces it; pass one of them.")
    check_output(out_dir, '--out_dir', folder=True)
    refuse_overlap(out_dir, '--out_dir', inputs)
    if int(os.environ.get('RANK', 0)) == 0:
        lock_folder(out_dir, '--out_dir')
    if not resume:
        if os.path.exists(ckpt_path) and not overwrite:
            die(f"{ckpt_path} already exists; pass --resume to continue that run, --overwrite to replace it, or "
                f"choose another --out_dir.")
        refuse_to_overwrite([os.path.join(out_dir, n) for n in ('config.json', 'log.jsonl')], overwrite)
    return ckpt_path


def prepare_run_dir(out_dir, overwrite, master):
    """Create --out_dir (every rank: a node may not share rank 0's disk); with --overwrite the master removes the old
    log. What an interrupted save left there went when the folder was locked (lock_folder)."""
    os.makedirs(out_dir, exist_ok=True)
    if master and overwrite:
        if os.path.exists(os.path.join(out_dir, 'log.jsonl')):
            os.remove(os.path.join(out_dir, 'log.jsonl'))  # a new run's log, not appended to the old one
        shutil.rmtree(os.path.join(out_dir, 'tensorboard'), ignore_errors=True)  # nor its TensorBoard events


def refuse_to_overwrite(paths, overwrite, flag='--out_dir'):
    """Stop before any work when an output of an earlier run is in the way, unless --overwrite says to replace it."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        die(f"{existing[0]} already exists; pass --overwrite to replace it, or choose another {flag}.")


@contextlib.contextmanager
def no_space_is_an_error(directory, needed_bytes=None):
    """A full disk, or a folder that stopped taking writes (made read-only, or its permissions changed under a running
    script), ends the script with one sentence naming the directory, not the OSError's traceback. The writes inside
    are atomic or redone on the next run, so nothing written before is lost."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            die(f"{os.path.abspath(directory)} cannot be written ({e.strerror.lower()}); make it writable or choose "
                f"another directory, and run again.")
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(directory).free
        need = f", about {needed_bytes / 2**20:.0f} MB are needed" if needed_bytes else ""
        die(f"the disk holding {os.path.abspath(directory)} is full ({free / 2**20:.0f} MB free{need}); "
            f"free some space there or choose another directory, and run again.")


def check_output(path, flag, folder):
    """An output of a script (a folder, or a file when folder=False), checked before any work starts, so that a run
    never computes for hours and then fails to write: every name in the path fits the file system's limit, nothing in
    the way is a file where a folder is needed (or a folder where the file goes), and the deepest folder that exists
    can be written by this user (not read-only). The folders are made later, by the writer."""
    path = os.path.abspath(path)
    name_max = os.pathconf('/', 'PC_NAME_MAX') if hasattr(os, 'pathconf') else 255
    for name in path.split(os.sep):
        if len(os.fsencode(name)) > name_max:
            die(f"{flag} {path}: the name '{name[:24]}...' is {len(os.fsencode(name))} bytes long, and the file "
                f"system allows {name_max}; choose a shorter name.")
    if os.path.lexists(path) and not os.path.exists(path):
        die(f"{flag} {path} is a symbolic link to nothing; remove it or choose another path.")
    if os.path.isdir(path) and not folder:
        die(f"{flag} {path} is a folder; pass the path of the file to write.")
    if os.path.exists(path) and not os.path.isdir(path) and folder:
        die(f"{flag} {path} is a file, and a folder is needed here; pass a folder (it is made if it does not exist).")
    existing = path if folder else os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        die(f"{flag} {path} cannot be made: {existing} is a file, not a folder; choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK) or (os.path.isfile(path) and not os.access(path, os.W_OK)):
        die(f"{flag} {path} cannot be written: {existing} is read-only for this user (or on a read-only file "
            f"system); choose another path.")


def refuse_overlap(output, out_flag, inputs):
    """An output that is one of the inputs (by path, link or hard link), lies inside an input folder, or is a folder
    that holds an input file, would overwrite what the script reads, or put its files among the data (a preview PNG
    read as a training image next time): refuse it. inputs: [(path or None, flag)], files and folders."""
    out = os.path.realpath(output)
    for path, flag in inputs:
        if path is None:
            continue
        inp = os.path.realpath(path)
        same = out == inp or (os.path.exists(out) and os.path.exists(inp) and os.path.samefile(out, inp))
        if same:
            where = 'is'
        elif os.path.isdir(inp) and out.startswith(inp + os.sep):
            where = 'lies inside'
        elif not os.path.isdir(inp) and inp.startswith(out + os.sep):
            where = 'holds'  # a folder output with an input file inside it
        else:
            continue
        die(f"{out_flag} {output} {where} {flag} {path}: its files would overwrite or mix with what is read; "
            f"choose another {out_flag}.")


# -----------------------------------------------------------------------------
# temporaries: a writer writes NAME as .NAME.PID.partial beside it, then renames it into place (os.replace, atomic), so
# a reader sees the old file or the new one; a writer killed before the rename leaves its partial, which carries its pid

PARTIAL = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.partial$')


def partial_path(path):
    """Where this process writes `path` before it renames it into place: .NAME.PID.partial beside it, a name no user
    chooses, and the one kind of file a lock's clean-up may remove (remove_dead_partials)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid()}.partial')


@contextlib.contextmanager
def atomic_write(path):
    """Write `path` whole or not at all: yields partial_path(path) to write to; then the file takes the mode a new file
    has under the user's umask (a library that writes 0600, as safetensors does, is overruled) and is renamed into
    place. A failed write leaves no partial behind."""
    tmp = partial_path(path)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_dead_partials(folder, name=None):
    """Remove the partial files (partial_path's names) in `folder` whose writer no longer runs on this host: what a
    killed writer left. Only of `name` when given; a live writer's partial, and every file of any other name, stay."""
    for entry in sorted(os.listdir(folder)):
        m = PARTIAL.match(entry)
        path = os.path.join(folder, entry)
        if (m is None or (name is not None and m['name'] != name) or _pid_alive(int(m['pid']))
                or os.path.islink(path) or not os.path.isfile(path)):
            continue
        os.remove(path)
        print(f"removed {path}, left by process {m['pid']}, whose write of {m['name']} was interrupted")

# -----------------------------------------------------------------------------
# locks: one run per output

LOCK_FILE = '.lock'
_held_locks = {}  # path -> (the text this process wrote into it, the folder lock_folder made or None)


def lock_folder(folder, flag):
    """Take `folder` for this run alone, before anything is written there: an exclusive lock file (folder/.lock, made
    with O_EXCL semantics: a hard link of a written file, so that it appears whole) that names this process, its host
    and its command line. Another run's live lock is one sentence; a lock whose process is gone from this host (a run
    that was killed) is taken over, with a message. Then the partial files of dead writers there are removed
    (remove_dead_partials); nothing else is. The lock goes when the process exits (release_locks).
    -> True when this call took the lock, False when this process held it already (a cache inside its --out_dir)."""
    return _lock(os.path.join(folder, LOCK_FILE), folder, flag, None)


def lock_file(path, flag):
    """lock_folder for one output file: the lock .NAME.lock beside it, so that runs writing other files of the same
    folder (two evaluations into one results folder) go on side by side. -> as lock_folder."""
    folder, name = os.path.split(os.path.abspath(path))
    return _lock(os.path.join(folder, f'.{name}.lock'), folder, flag, name)


def _lock(path, folder, flag, name):
    """Take the lock file `path` that guards `folder` (name: the one output file it guards, or None for the folder)."""
    target = os.path.join(folder, name) if name else folder  # what the messages name
    import socket
    target = os.path.join(folder, name) if name else folder  # what the messages name
    if path in _held_locks:
        return False
    made = None if os.path.isdir(folder) else folder
    command = ' '.join(sys.argv)[:160].replace('\n', ' ')
    text = f"{os.getpid()} {socket.gethostname()} {time.time():.6f} {command}\n"
    try:
        os.makedirs(folder, exist_ok=True)
        for _ in range(10):  # a lost race for a stale lock goes round again
            if _create_lock(path, text):
                break
            _take_over_if_stale(path, target, flag)
        else:
            die(f"{target} could not be locked ({path} keeps changing); run again.")
    except OSError as e:
        die(f"{flag} {target} cannot be written ({e.strerror.lower()}); choose another path.")
    if not _held_locks:
        import atexit
        atexit.register(release_locks)
    _held_locks[path] = (text, made)
    remove_dead_partials(folder, name)
    return True


def _create_lock(path, text):
    """Make the lock file holding `text` unless it exists. -> whether this call made it."""
    mine = partial_path(path)
    with open(mine, 'w') as f:
        f.write(text)
    try:
        os.link(mine, path)  # fails if the lock exists: atomic, with its content in place
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: O_EXCL itself, and the content a moment later
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        return True
    finally:
        os.remove(mine)


def _command_of(pid):
    """The command line of the running process `pid` on this host, or '' where it cannot be read."""
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace').strip()[:160]
    except OSError:
        return ''


def _take_over_if_stale(path, target, flag):
    """The lock at `path` is someone's: refuse, naming its process, host and command line, or remove it when its process
    no longer runs on this host (a pid that is this process's own, in a lock it does not hold, is also gone: the same
    pid running again)."""
    import socket
    for _ in range(20):  # a lock made by O_EXCL alone is empty for a moment
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return  # released meanwhile: try again
        if text.strip():
            break
        time.sleep(0.05)
    try:
        pid, host = int(text.split()[0]), text.split()[1]
    except (ValueError, IndexError):
        die(f"{target} is locked by {path}, which names no process; if no other run writes there, delete it.")
    locked_by = (text.strip().split(' ', 3)[3:] or ['a command not recorded'])[0]
    if host != socket.gethostname():
        die(f"{flag} {target} is in use by another run (process {pid} on {host}, which runs `{locked_by}`); wait for "
            f"it to end or choose another path (if that run is gone, delete {path}).")
    if pid != os.getpid() and _pid_alive(pid):
        running = _command_of(pid) or locked_by
        die(f"{flag} {target} is in use by another run (process {pid} on {host}, which runs `{running}`); wait for it "
            f"to end or choose another path (if process {pid} is no run of this project, delete {path}).")
    stale = partial_path(path)
    try:
        os.rename(path, stale)  # one taker wins; a loser finds the winner's fresh lock next time round
    except FileNotFoundError:
        return
    with open(stale) as f:
        if f.read() != text:  # it was replaced by a fresh lock between our read and the rename: put it back
            with contextlib.suppress(FileExistsError):
                os.link(stale, path)
            os.remove(stale)
            return
    os.remove(stale)
    print(f"took over the lock of {target} from process {pid}, which no longer runs (it was killed or crashed)")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # running, under another user
    return True


def release_lock(path):
    """Give up the lock of `path` (lock_folder's or lock_file's) before the process ends: a latent cache once it is
    built, an export that main() ended."""
    folder, name = os.path.split(os.path.abspath(path))
    release_locks([os.path.join(path, LOCK_FILE), os.path.join(folder, f'.{name}.lock')])


def release_locks(paths=None):
    """Remove this process's locks (all at exit; the in-process test runner calls it after each script), and a folder
    that lock_folder made and nothing was written into."""
    for path, (text, made) in list(_held_locks.items()):
        if paths is not None and path not in paths:
            continue
        del _held_locks[path]
        with contextlib.suppress(OSError):
            with open(path) as f:
                if f.read() != text:
                    continue
            os.remove(path)
            if made:
                os.rmdir(made)  # fails, as it should, unless the folder is empty

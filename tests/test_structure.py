"""How the code is put together, checked: strict command lines, the documented defaults are the real ones, no import
circle, and no evaluation stack under training."""
import argparse
import ast
import os
import re
import subprocess
import sys

import pytest

from cli import add_common_args
from tests.helpers import ROOT

SCRIPTS = ['train_ae.py', 'train_ldm.py', 'sample.py', 'eval_fid.py', 'spectrum.py', 'reproduce.py',
           'export.py',
           *(os.path.join('bench', f) for f in sorted(os.listdir(os.path.join(ROOT, 'bench'))) if f.startswith('bench_'))]


def tree(name):
    with open(os.path.join(ROOT, name)) as f:
        return ast.parse(f.read())


def imported_modules(name):
    out = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            out |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split('.')[0])
    return out


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_parser_refuses_abbreviated_flags(script):
    # argparse's default lets `--kl 1e-6` stand for --kl_weight: a typo for another flag would be taken silently
    calls = [n for n in ast.walk(tree(script)) if isinstance(n, ast.Call)
             and getattr(n.func, 'attr', getattr(n.func, 'id', None)) == 'ArgumentParser']
    assert calls, f"{script} builds no ArgumentParser"
    for call in calls:
        abbrev = {k.arg: k.value for k in call.keywords}.get('allow_abbrev')
        assert isinstance(abbrev, ast.Constant) and abbrev.value is False, f"{script}: allow_abbrev=False missing"


def test_an_abbreviated_flag_is_an_error():
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'sample.py'), '--num_sam', '4'], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 2 and 'unrecognized arguments: --num_sam' in p.stderr


@pytest.mark.parametrize('script', ['train_ae.py', 'train_ldm.py'])
def test_docstring_lists_the_shared_flags_with_their_real_defaults(script):
    t = tree(script)
    # the script's own overrides of the shared defaults, read from its add_common_args(parser, ...) call
    call = next(n for n in ast.walk(t) if isinstance(n, ast.Call) and getattr(n.func, 'id', None) == 'add_common_args')
    parser = add_common_args(argparse.ArgumentParser(), **{k.arg: ast.literal_eval(k.value) for k in call.keywords})
    defaults = {a.dest: a.default for a in parser._actions if a.dest != 'help'}
    valued, switched = ast.get_docstring(t).split('Shared flags')[1].split('switches:')
    listed = dict(re.findall(r'--(\w+) (\S+)', valued))
    switches = set(re.findall(r'--(\w+)', switched))
    assert set(listed) | switches == set(defaults), "every shared flag is listed, and only those"
    for flag, shown in listed.items():
        real = defaults[flag]
        if real is None:
            assert shown.startswith('('), flag
        elif isinstance(real, float):
            assert float(shown) == real, flag
        else:
            assert shown == str(real), flag


def test_no_import_circle_and_no_evaluation_stack_under_training():
    # the layers, bottom up: cli (the command line, torch-free) imports none of the project's modules, common none
    # either, model none, metrics only model (the video AE's time pooling), data
    # adds common and metrics; the video AE builds on model, weight files sit above both
    project = {os.path.splitext(f)[0] for f in os.listdir(ROOT) if f.endswith('.py')}
    below = {'cli': set(), 'common': set(), 'metrics': {'model'}, 'data': {'common', 'metrics'}, 'model': set(),
             'video_model': {'model'}, 'weights': {'common', 'model', 'video_model'}, 'spectral': {'model'}}
    for name, allowed in below.items():
        assert imported_modules(f'{name}.py') & project <= allowed, name
    assert imported_modules('train_ae.py') & project <= {'cli', 'common', 'data', 'metrics', 'model', 'video_model',
                                                          'weights', 'perceptual', 'spectral'}
    # what train_ae.py can import loads neither scipy nor the Inception network nor eval_fid
    code = ("import sys, common, data, metrics, model, video_model, weights, perceptual, spectral; "
            "bad = {'scipy', 'eval_fid', 'inception', 'torchvision.models.inception', 'tensorboard'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_no_helper_takes_the_whole_args_namespace():
    # STYLE.md: a helper gets the few values it needs, so a reader sees which flags matter; check_args, a script's
    # rules between flags right after parsing, is the one function that reads the command line whole
    files = [f for f in os.listdir(ROOT) if f.endswith('.py')] + [os.path.join('bench', f) for f in os.listdir(
        os.path.join(ROOT, 'bench')) if f.endswith('.py')]
    takers = [f"{name}: {node.name}" for name in files for node in ast.walk(tree(name))
              if isinstance(node, ast.FunctionDef) and node.name != 'check_args'
              and 'args' in [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]]
    assert not takers, takers

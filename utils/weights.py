"""
Everything about weight files, in one place: reading them (.safetensors or torch files), the one downloader of public
weights (a local file, else the canonical URL through the torch hub cache), the renames that load the public layouts
(diffusers' AutoencoderKL and AutoencoderKLCogVideoX, whole LDM / Stable Diffusion checkpoints) into our modules, a
strict load whose mismatch is one sentence, and the autoencoder loader every script uses.
"""
import json
import os
import re
import pickle
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors

from utils.common import die
from model import AE_PRESETS, Autoencoder, IdentityFirstStage, make_ae_config
from video_model import VIDEO_AE_PRESETS, VideoAEConfig, VideoAutoencoder


def fetch_weights(path, url, file_name, what, flag=None):
    """The state dict in the local file `path` when one is given, else in `url` through the torch hub cache (downloaded
    once, as `file_name`; its hash is checked when the name carries one, as torchvision's do). Only tensors are read,
    whichever the source. Weights that cannot be had (a missing file, no network) are a FileNotFoundError and weights
    that cannot be read a ValueError, each one sentence naming the file, `what` needs it and, for a script, the `flag`
    that passes a local copy."""
    name = f"{flag} {path}" if flag else f"{what} weights file {path}"
    hint = f"; pass {file_name}" if flag else ''
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name} does not exist" + (f"; pass the path of {file_name} (from {url})" if flag else ''))
        sd = read_file(path, name, hint)
    else:
        cached = os.path.join(torch.hub.get_dir(), 'checkpoints', file_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # torch's notes on pickle protocols: not the user's business
                sd = torch.hub.load_state_dict_from_url(url, map_location='cpu', progress=False, file_name=file_name,
                                                        check_hash=True, weights_only=True)
        except Exception as e:
            if not os.path.isfile(cached):  # no network (URLError is an OSError), or a download that failed its hash
                raise FileNotFoundError(f"{what} needs {file_name}, which is not in the torch hub cache "
                                        f"({os.path.dirname(cached)}) and could not be downloaded from {url}"
                                        + (f"; download it and pass it as {flag} PATH" if flag else '')) from None
            raise ValueError(unreadable(f"{cached} in the torch hub cache", e, "; delete it so that it is downloaded "
                                        "again", cached)) from None
        name = f"{what}'s {cached}"
    problem = contents_problem(sd, STATE_DICT)
    if problem:
        raise ValueError(f"{name} is not a weights file: {problem}" + hint)
    return sd


# -----------------------------------------------------------------------------
# reading files: tensors only, and the structure each reader expects

def is_pickle(path):
    """Whether the file at `path` is one whole pickle stream (pickletools parses its opcodes; nothing is run)."""
    import pickletools
    try:
        with open(path, 'rb') as f:
            for _ in pickletools.genops(f):
                pass
        return True
    except Exception:
        return False


def unreadable(name, error, hint='', path=None):
    """The one sentence for a file torch.load(weights_only=True) or safetensors would not read. A pickle that needs
    more than tensors, numbers, strings, lists and dicts (a class, a function, numpy arrays: anything whose loading
    could run code) is named as refused; anything else is a file that is not what it should be."""
    found = re.search(r'GLOBAL ([\w.]+)', str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if found:  # torch's weights-only unpickler names the class or function it would have had to call
        return (f"{name} was refused: it holds Python objects ({found[1]}), and only tensors, numbers, strings, lists "
                f"and dicts are read, since loading anything else can run code"
                f"{hint or '; convert weights you trust to .safetensors'}")
    if path is not None and isinstance(error, pickle.UnpicklingError) and is_pickle(path):  # not torch.save's zip file
        return (f"{name} was refused: it is a pickle that torch's safe reader cannot follow (a raw pickle.dump, not a "
                f"torch.save), and loading it otherwise could run code"
                f"{hint or '; convert weights you trust to .safetensors'}")
    hint = hint or '; check that the file is complete'
    return f"{name} could not be read as torch weights ({type(error).__name__}){hint}"


def read_file(path, name=None, hint=''):
    """The one reader of every weight and checkpoint file: .safetensors, or a torch file through
    torch.load(weights_only=True), which builds tensors, numbers, strings, lists and dicts and nothing else, so that no
    file can run code. -> what the file holds. A missing file is a FileNotFoundError, a file that is not what it should
    be (or needs more than that) a ValueError: one sentence each, naming it as `name` (default: its path)."""
    name = name or str(path)
    if os.path.isdir(path):
        raise ValueError(f"{name} is a folder; pass the weights or checkpoint file in it.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} does not exist; check the path.")
    try:
        if str(path).endswith('.safetensors'):
            return load_safetensors(str(path), device='cpu')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch's notes on pickle protocols: not the user's business
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated download, wrong file type, a pickle that needs more than tensors, ...
        raise ValueError(unreadable(name, e, hint, path)) from None


STATE_DICT = 'a state dict'  # in a spec: a dict of names -> tensors
POSITIVE = 'a positive integer'  # in a spec: a size, from 1 to MAX_SIZE
MAX_SIZE = 2 ** 14  # pixels, latents, frames or channels: beyond any model this project makes, and beyond memory


_NAMES = {int: 'an integer', float: 'a number', str: 'a string', bool: 'True or False', list: 'a list', dict: 'a dict',
          tuple: 'a tuple', type(None): 'None'}


def _a(value):
    """What a value is, in words: 'a list', 'a Tensor', 'None'."""
    return _NAMES.get(type(value), f"a {type(value).__name__}")


def contents_problem(obj, spec, where='it'):
    """What in `obj` (read from a file) differs from the structure `spec` describes, in a clause, or None when nothing
    does. spec: a type (float takes an int too), STATE_DICT, POSITIVE, {key: spec} for a dict ('key?' for a key that
    may be absent), [spec] for a list of such items, or a tuple of alternatives. One check for every file a script reads, so that a file of the wrong shape (a
    tensor, a list, a config without its keys) is one sentence, never an AttributeError deep in a script."""
    if spec == STATE_DICT:
        if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
            return f"{where} is {_a(obj)}, not a state dict (names -> tensors)"
        return None
    if spec == POSITIVE:
        if not isinstance(obj, int) or isinstance(obj, bool) or obj < 1:
            return f"{where} is {obj!r}, not a positive integer"
        if obj > MAX_SIZE:
            return f"{where} is {obj}, beyond any size this project makes (at most {MAX_SIZE})"
        return None
    if isinstance(spec, dict):
        if not isinstance(obj, dict):
            return f"{where} is {_a(obj)}, not a dict"
        for key, sub in spec.items():
            if key.rstrip('?') not in obj:
                if key.endswith('?'):
                    continue
                return f"{where} has no {key.rstrip('?')!r}"
            inner = f"its {key.rstrip('?')!r}" if where == 'it' else f"{where}[{key.rstrip('?')!r}]"
            problem = contents_problem(obj[key.rstrip('?')], sub, inner)
            if problem:
                return problem
        return None
    if isinstance(spec, list):  # [item spec]: a list of such items
        if not isinstance(obj, list):
            return f"{where} is {_a(obj)}, not a list"
        return next((p for i, item in enumerate(obj) if (p := contents_problem(item, spec[0], f"{where}[{i}]"))), None)
    alternatives = spec if isinstance(spec, tuple) else (spec,)
    if any(isinstance(a, (list, dict, str)) for a in alternatives):  # structured alternatives: one must fit
        problems = [contents_problem(obj, a, where) for a in alternatives]
        if None in problems:
            return None
        inside = [p for p in problems if not p.startswith(f"{where} is ")]  # the one that looked inside says more
        names = [a if isinstance(a, str) else _NAMES.get(a if isinstance(a, type) else type(a)) for a in alternatives]
        return inside[0] if inside else f"{where} is {_a(obj)}, not {' or '.join(names)}"
    kinds = alternatives + ((int,) if float in alternatives else ())
    if not isinstance(obj, kinds) or (isinstance(obj, bool) and bool not in kinds):
        return f"{where} is {_a(obj)}, not {' or '.join(_NAMES.get(k, k.__name__) for k in alternatives)}"
    return None


# what each reader of our own checkpoints uses, checked once when the file is read (load_checkpoint)
_AE = {'model': STATE_DICT, 'ema?': STATE_DICT,
       'config': {'preset': str, 'ae_config?': dict, 'num_frames?': POSITIVE}}
_LDM = {'ema': STATE_DICT, 'model?': STATE_DICT, 'step': int,
        'latent_scale': (float, [float]), 'latent_shift': (float, [float]),
        'config': {'ae': str, 'image_size': POSITIVE, 'schedule?': (str, type(None)), 'prediction': str,
                   'learn_sigma': bool,
                   'backbone': {'model': str, 'preset': str, 'latent_size': POSITIVE, 'in_channels': POSITIVE,
                                'num_classes': int, 'learn_sigma': bool, 'class_dropout_prob': float,
                                'num_frames?': POSITIVE}}}
_RUN = {'step': int, 'scaler': dict, 'loader': {'epoch': int, 'batch_in_epoch': int, 'unreadable': [int]},
        'rng': [{'python': list, 'numpy': list, 'torch': torch.Tensor, 'cuda?': [torch.Tensor]}]}  # common.rng_state
CHECKPOINTS = {  # kind -> (what it is, in words; the script that writes it; its spec)
    'train_ae.py': ('a train_ae.py checkpoint', 'train_ae.py',
                    {**_AE, **_RUN, 'disc': STATE_DICT, 'opt_g': dict, 'opt_d': dict,
                     'config': {**_AE['config'], 'ae_config': dict}}),
    'train_ldm.py': ('a train_ldm.py checkpoint', 'train_ldm.py', {**_LDM, **_RUN, 'model': STATE_DICT, 'opt': dict}),
    'ldm': ('a train_ldm.py checkpoint (its ckpt.pt or ema.pt)', 'train_ldm.py', _LDM),
    'autoencoder': ('a train_ae.py checkpoint', 'train_ae.py', _AE),
    None: ('a checkpoint of this project', 'a training script', {'step': int}),  # only the step is read (reproduce.py)
}


def diffusers_to_ldm(sd):
    """Rename a diffusers AutoencoderKL or AutoencoderKLCogVideoX state dict to our layout, LDM's. diffusers stores the
    decoder levels coarse to fine (up_blocks.0 is the lowest resolution), LDM by level (up.0 is full resolution); its
    image attention projections are nn.Linear (older files: query/key/value/proj_attn) where LDM has 1x1 convs; the
    video decoder's conditioned norms wrap their GroupNorm and their 1x1x1 convs, which ours hold directly."""
    n_up = 1 + max((int(m[1]) for k in sd if (m := re.match(r'decoder\.up_blocks\.(\d+)\.', k))), default=-1)
    renames = [
        (r'^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.', lambda m: f'decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.'),
        (r'^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.', lambda m: f'decoder.up.{n_up - 1 - int(m[1])}.upsample.'),
        (r'^decoder\.up_blocks\.(\d+)\.attentions\.(\d+)\.', lambda m: f'decoder.up.{n_up - 1 - int(m[1])}.attn.{m[2]}.'),
        (r'^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.', r'encoder.down.\1.block.\2.'),
        (r'^encoder\.down_blocks\.(\d+)\.attentions\.(\d+)\.', r'encoder.down.\1.attn.\2.'),  # CompVis' attn_resolutions
        (r'^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.', r'encoder.down.\1.downsample.'),
        (r'^(encoder|decoder)\.mid_block\.resnets\.0\.', r'\1.mid.block_1.'),
        (r'^(encoder|decoder)\.mid_block\.resnets\.1\.', r'\1.mid.block_2.'),
        (r'^(encoder|decoder)\.mid_block\.attentions\.0\.', r'\1.mid.attn_1.'),  # images only
        (r'^(encoder|decoder)\.conv_norm_out\.', r'\1.norm_out.'),  # images (CogVideoX's is norm_out already)
        (r'\.conv_shortcut\.', '.nin_shortcut.'),
        (r'\.norm_layer\.', '.norm.'),  # video: CogVideoX's SpatialNorm3D
        (r'\.conv_(y|b)\.conv\.', r'.conv_\1.'),
    ]
    attn = {'group_norm': 'norm', 'to_q': 'q', 'to_k': 'k', 'to_v': 'v', 'to_out.0': 'proj_out',
            'query': 'q', 'key': 'k', 'value': 'v', 'proj_attn': 'proj_out'}
    out = {}
    for k, v in sd.items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        m = re.match(r'^(.*\.(?:mid\.attn_1|(?:down|up)\.\d+\.attn\.\d+)\.)(.+)\.(weight|bias)$', k)
        if m and m[2] in attn:
            k = f'{m[1]}{attn[m[2]]}.{m[3]}'
            if v.dim() == 2:
                v = v[:, :, None, None]  # nn.Linear weight (C, C) -> 1x1 conv weight (C, C, 1, 1)
        out[k] = v
    return out


def ldm_to_diffusers(sd, levels):
    """Our LDM-layout names -> diffusers' (AutoencoderKL and AutoencoderKLCogVideoX alike): the inverse of
    diffusers_to_ldm, for export.py. diffusers stores decoder levels coarse to fine."""
    renames = [
        (r'^decoder\.up\.(\d+)\.block\.(\d+)\.', lambda m: f'decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.'),
        (r'^decoder\.up\.(\d+)\.upsample\.', lambda m: f'decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.'),
        (r'^encoder\.down\.(\d+)\.block\.(\d+)\.', r'encoder.down_blocks.\1.resnets.\2.'),
        (r'^encoder\.down\.(\d+)\.downsample\.', r'encoder.down_blocks.\1.downsamplers.0.'),
        (r'^decoder\.up\.(\d+)\.attn\.(\d+)\.', lambda m: f'decoder.up_blocks.{levels - 1 - int(m[1])}.attentions.{m[2]}.'),
        (r'^encoder\.down\.(\d+)\.attn\.(\d+)\.', r'encoder.down_blocks.\1.attentions.\2.'),
        (r'^(encoder|decoder)\.mid\.block_1\.', r'\1.mid_block.resnets.0.'),
        (r'^(encoder|decoder)\.mid\.block_2\.', r'\1.mid_block.resnets.1.'),
        (r'\.nin_shortcut\.', '.conv_shortcut.'),
    ]
    image = {r'^(encoder|decoder)\.norm_out\.': r'\1.conv_norm_out.'}  # the video VAE keeps norm_out
    video = {r'\.norm\.': '.norm_layer.', r'\.conv_(y|b)\.': r'.conv_\1.conv.'}  # CogVideoX's spatial norms
    attn = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}
    is_video = any('.conv_y.' in k for k in sd)
    out = {}
    for k, v in sd.items():
        for pattern, repl in renames + list((video if is_video else image).items()):
            k = re.sub(pattern, repl, k)
        k = re.sub(r'^(encoder|decoder)\.mid\.attn_1\.', r'\1.mid_block.attentions.0.', k)
        m = re.match(r'^(.*\.attentions\.\d+\.)(norm|q|k|v|proj_out)\.(weight|bias)$', k)
        if m:  # LDM's 1x1 convs are nn.Linear in diffusers' attention
            k = f'{m[1]}{attn[m[2]]}.{m[3]}'
            v = v[:, :, 0, 0] if v.dim() == 4 else v
        out[k] = v.contiguous()
    return out


def ldmbert_to_ours(sd):
    """Rename a diffusers LDMBertModel state dict (LDM's BERTEmbedder, as diffusers ports it) to model.TextEncoder's
    names; its to_logits head (unused by LDM's conditioning) is dropped."""
    renames = [(r'^model\.embed_tokens\.', 'token_embedding.'), (r'^model\.embed_positions\.', 'position_embedding.'),
               (r'^model\.layer_norm\.', 'norm.'), (r'^model\.layers\.(\d+)\.', r'blocks.\1.'),
               (r'\.self_attn_layer_norm\.', '.norm1.'), (r'\.final_layer_norm\.', '.norm2.'),
               (r'\.self_attn\.([qkv])_proj\.', r'.attn.to_\1.'), (r'\.self_attn\.out_proj\.', '.attn.to_out.0.')]
    out = {}
    for k, v in sd.items():
        if k.startswith('to_logits.'):
            continue
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def load_ae_state_dict(model, state_dict):
    """Load our own weights, a whole Stable Diffusion checkpoint (its 'first_stage_model.' part) or a diffusers
    AutoencoderKL / AutoencoderKLCogVideoX state dict into `model` (an image or a video autoencoder), strictly."""
    sd = state_dict.get('state_dict', state_dict)
    if any(k.startswith('first_stage_model.') for k in sd):
        sd = {k[len('first_stage_model.'):]: v for k, v in sd.items() if k.startswith('first_stage_model.')}
    sd = {re.sub(r'^(module\.|_orig_mod\.)+', '', k): v for k, v in sd.items()}  # DDP / torch.compile wrappers
    sd = {k: v for k, v in sd.items() if not k.startswith('loss.')}  # LDM's own checkpoints also hold D and LPIPS
    if any('.down_blocks.' in k or '.mid_block.' in k or '.up_blocks.' in k for k in sd):
        sd = diffusers_to_ldm(sd)
    if isinstance(model, VideoAutoencoder):
        return load_strictly(model, sd, "the video autoencoder weights", "(cogvideox for CogVideoX's VAE, or the "
                             "preset of the train_ae.py run)")
    return load_strictly(model, sd, "the autoencoder weights", "(sd for Stable Diffusion's VAE, flux for FLUX.1's, "
                         "or the preset of the train_ae.py run)")


def load_strictly(model, sd, what, presets):
    """load_state_dict(strict=True), with every mismatch counted and the first named in one sentence."""
    expected = model.state_dict()
    problems = [f"{k!r} is {tuple(v.shape)} in the file but {tuple(expected[k].shape)} in the model"
                for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
    problems += [f"{k!r} is missing from the file" for k in expected if k not in sd]
    problems += [f"{k!r} is in the file but not in the model" for k in sd if k not in expected]
    if problems:
        raise ValueError(f"{what} do not fit this architecture ({problems[0]}, {len(problems)} mismatch(es) in all); "
                         f"pass the preset the weights were made for {presets}.")
    model.load_state_dict(sd, strict=True)
    return model


def load_checkpoint(path, kind=None, hint=None):
    """One of this project's own checkpoints, of `kind` (a key of CHECKPOINTS), read through read_file (tensors only)
    and checked against the structure its readers use; anything else is one sentence, and the script stops. An EMA
    export (train_ldm.py's ema.pt) must be at the step of the ckpt.pt beside it: the two are written one after the
    other, and a run killed in between leaves an ema.pt of older weights, which would be sampled without a word.
    `hint` replaces the advice of the sentence for a file of another kind."""
    what, script, spec = CHECKPOINTS[kind]
    try:
        ckpt = read_file(path, f"checkpoint {path}")
    except (FileNotFoundError, ValueError) as e:
        die(str(e))
    problem = contents_problem(ckpt, spec) or ("its 'step' is below 0" if ckpt.get('step', 0) < 0 else None)
    if problem:
        die(f"{path} is not {what}: {problem}; {hint or f'pass a checkpoint that {script} wrote'}.")
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), 'ckpt.pt')
    if kind == 'ldm' and 'model' not in ckpt and os.path.isfile(sibling):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                step = torch.load(sibling, map_location='cpu', weights_only=True, mmap=True).get('step')  # no copy
        except Exception:
            step = None  # not ours to judge here: it is not the file asked for
        if isinstance(step, int) and step != ckpt['step']:
            die(f"{path} holds the EMA weights of step {ckpt['step']}, and {sibling} beside it is at step {step}: the "
                f"run was stopped between writing the two; sample {sibling}, or resume the run to rewrite both.")
    return ckpt


def read_autoencoder(path, preset=None):
    """What an autoencoder file holds, before a network is built: (its architecture, a model.AEConfig or a
    video_model.VideoAEConfig; its state dict; the train_ae.py run config, or None for public weights). A train_ae.py
    checkpoint's own config decides the architecture (`preset` is not needed) and its EMA weights are used when present;
    public weights (LDM / diffusers layouts, .safetensors or torch file; 3D convolutions make them a video autoencoder)
    need the `preset` they were made for."""
    ckpt = read_file(path)
    recorded = safetensors_config(path)
    if recorded is not None:  # our own .safetensors export (reproduce.py --pretrain): weights, and the config in metadata
        ckpt = {'model': ckpt, 'config': recorded}
    if isinstance(ckpt, dict) and 'latent_scale' in ckpt:
        raise ValueError(f"{path} is a train_ldm.py checkpoint (a diffusion model), not an autoencoder; pass the "
                         f"train_ae.py checkpoint or the public weights of one.")
    if isinstance(ckpt, dict) and 'model' in ckpt and 'config' in ckpt:  # a train_ae.py checkpoint
        problem = contents_problem(ckpt, CHECKPOINTS['autoencoder'][2] if recorded is None else {'model': STATE_DICT})
        if problem:
            raise ValueError(f"{path} is not a train_ae.py checkpoint: {problem}.")
        config, state = ckpt['config'], ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model']
        video = config['num_frames'] > 1 if 'num_frames' in config else 'temporal_levels' in config.get('ae_config', {})
        name, overrides = config['preset'], config.get('ae_config')
    else:  # public weights: a state dict, or a whole Stable Diffusion checkpoint whose 'state_dict' holds it
        problem = contents_problem(ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt, STATE_DICT)
        if problem:
            raise ValueError(f"{path} holds no autoencoder weights: {problem}.")
        config, state, name, overrides = None, ckpt, preset, None
        video = any(torch.is_tensor(v) and v.dim() == 5 for v in state.get('state_dict', state).values())
    presets = VIDEO_AE_PRESETS if video else AE_PRESETS
    if name is None:
        raise ValueError(f"{path} holds bare weights without a config; pass the preset they were made for "
                         f"(one of {', '.join(presets)}).")
    try:
        return make_ae_config(name, overrides, presets), state, config
    except TypeError as e:  # a field of the wrong type in the checkpoint's ae_config
        raise ValueError(f"the ae_config in {path} is not one this project writes ({e}).") from None


def safetensors_config(path):
    """The train_ae.py config ({'preset', 'ae_config', 'num_frames'}) that the metadata of a .safetensors file records
    under 'config', as reproduce.py --pretrain writes it; None for other files (public weights have none)."""
    if not str(path).endswith('.safetensors'):
        return None
    with safe_open(str(path), framework='pt') as f:
        text = (f.metadata() or {}).get('config')
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    problem = contents_problem(config, {'preset': str, 'ae_config': dict, 'num_frames?': POSITIVE})
    if problem:
        raise ValueError(f"the 'config' in the metadata of {path} is not a train_ae.py config (preset, ae_config, "
                         f"num_frames): {problem}; re-export the weights, or drop the metadata and pass --preset.")
    return config


def build_autoencoder(cfg, path):
    """The network a file's config describes (read_autoencoder), image or video; a config of nonsense (a width of
    'x', no levels) is a ValueError naming the file, not a traceback from inside the model."""
    try:
        return (VideoAutoencoder if isinstance(cfg, VideoAEConfig) else Autoencoder)(cfg)
    except Exception as e:  # whatever a config of nonsense makes the constructors raise
        raise ValueError(f"the config in {path} describes no autoencoder that can be built ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}).") from None


PIXELS = 'none'  # the path that stands for no autoencoder: diffusion on pixels, LDM-1


def load_autoencoder(path, preset=None, device='cpu', video=None):
    """An autoencoder in eval mode, an image one (model.Autoencoder) or a video one (video_model.VideoAutoencoder),
    whichever the file holds (read_autoencoder), or for path PIXELS the identity (model.IdentityFirstStage). `video`
    True or False refuses the other kind, in one sentence."""
    if path == PIXELS:
        if video:
            raise ValueError("diffusion on pixels (--ae none) is for images; a video model needs a video autoencoder.")
        return IdentityFirstStage().to(device).eval()
    cfg, state, config = read_autoencoder(path, preset)
    is_video = isinstance(cfg, VideoAEConfig)
    if video is not None and video != is_video:
        made = f" (train_ae.py --num_frames {config['num_frames']})" if config and 'num_frames' in config else ''
        if is_video:
            raise ValueError(f"{path} is a video autoencoder{made}; use it with --num_frames, or pass an image "
                             f"autoencoder.")
        raise ValueError(f"{path} is an image autoencoder{made}; a video model needs a train_ae.py --num_frames "
                         f"checkpoint, or CogVideoX's weights with the preset cogvideox.")
    model = build_autoencoder(cfg, path)
    load_ae_state_dict(model, state)
    return model.to(device).eval()

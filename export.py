"""
Write an autoencoder (a train_ae.py checkpoint, e.g. an SE fine-tune, or public weights) in the formats other tools load:
  diffusers  diffusers' AutoencoderKL (a VQ autoencoder: VQModel): a folder with config.json and
             diffusion_pytorch_model.safetensors, for AutoencoderKL.from_pretrained(PATH) (VQModel.from_pretrained);
  flux       FLUX.1's ae.safetensors: LDM's parameter names without quant convs, as FLUX's own AutoEncoder
             (black-forest-labs/flux, src/flux/modules/autoencoder.py) loads them;
  cogvideox  a video autoencoder as CogVideoX's VAE: a folder for diffusers' AutoencoderKLCogVideoX.from_pretrained(PATH).

  python export.py --ckpt out/ae/ckpt.pt --format diffusers --out out/ae/diffusers
  python export.py --ckpt out/flux_se/ckpt.pt --format flux --out out/flux_se/ae.safetensors
  python export.py --ckpt flux1_ae.safetensors --preset flux --format diffusers --out flux_vae   # public weights
  python export.py --ckpt out/video_ae/ckpt.pt --format cogvideox --out out/video_ae/cogvideox

A train_ae.py checkpoint is written with its EMA weights when it has them, else its raw weights: the weights that
load_autoencoder, train_ldm.py and sample.py use. What a format cannot hold (a VQ autoencoder as FLUX's,
a GroupNorm or chunking the format fixes otherwise, ...) is refused in one sentence. Dropout only acts in
training and is in no format. The latent normalisation a diffusion model runs on, (z - shift_factor) * scaling_factor,
goes into diffusers' config.json, and for FLUX (whose code holds it, in AutoEncoderParams) into the file's metadata;
by default the published values of the preset the weights are made for, otherwise 1 and no shift.
"""
import os
import json
import argparse

from utils.cli import HelpFormatter, checked, stop_on_signals

FORMATS = {'diffusers': "diffusers' AutoencoderKL or VQModel", 'flux': "FLUX.1's ae.safetensors",
           'cogvideox': "CogVideoX's VAE (diffusers' AutoencoderKLCogVideoX)"}


def parse_args(argv=None):
    """The command line (sys.argv when argv is None), read without torch: main() reads it again."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                allow_abbrev=False)
    p.add_argument('--ckpt', type=str, required=True, help='a train_ae.py checkpoint, or public weights with --preset')
    p.add_argument('--preset', type=str, default=None, help="the architecture of public weights ('sd', 'flux'; 'cogvideox' for videos); train_ae.py checkpoints know their own")
    p.add_argument('--format', type=str, required=True, choices=list(FORMATS), help='the format to write')
    p.add_argument('--out', type=str, required=True, help='the folder to write (diffusers, cogvideox) or the .safetensors file (flux)')
    p.add_argument('--scaling_factor', type=checked(float, lo=0, lo_open=True), default=None, help="diffusion runs on (z - shift_factor) * scaling_factor; default: the preset's published value, else 1")
    p.add_argument('--shift_factor', type=checked(float), default=None, help="the latent shift diffusion subtracts before scaling; default: the preset's published value, else none")
    p.add_argument('--overwrite', action='store_true', help='replace the files already at --out')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # before torch is imported, so that --help and a mistyped flag answer at once
    stop_on_signals()

from safetensors.torch import save_file

from utils.common import die
from utils.rundir import (check_output, refuse_overlap, refuse_to_overwrite, no_space_is_an_error, lock_folder, lock_file,
                    release_lock, atomic_write)
from video_model import VideoAEConfig
from utils.weights import build_autoencoder, ldm_to_diffusers, load_ae_state_dict, read_autoencoder

PUBLIC_LATENT_NORM = {'sd': (0.18215, None), 'flux': (0.3611, 0.1159), 'cogvideox': (1.15258426, None)}  # (scale, shift); CogVideoX-2b's


def unsupported(cfg, fmt):
    """Why an autoencoder with config `cfg` cannot be written as `fmt`, in one clause; None when it can."""
    if cfg.regularizer != 'kl' and fmt != 'diffusers':
        return "it is a VQ autoencoder, which only the diffusers format holds (as VQModel)"
    if cfg.regularizer == 'vq' and not cfg.use_quant_conv:
        return "diffusers' VQModel always has quant convs, and this model has none (use_quant_conv)"
    if fmt == 'flux' and (getattr(cfg, 'attn_resolutions', ()) or getattr(cfg, 'attn_type', 'vanilla') != 'vanilla'):
        return "FLUX.1's autoencoder has attention in the mid-block alone (no attn_resolutions, attn_type 'vanilla')"
    if fmt in ('diffusers', 'cogvideox') and cfg.ch_mult[0] != 1:
        return f"diffusers' first level keeps the width of the input conv, so ch_mult must start with 1, not {cfg.ch_mult}"
    if fmt == 'flux' and cfg.use_quant_conv:
        return "FLUX.1's autoencoder has no quant convs (use_quant_conv); write it in the diffusers format instead"
    if fmt == 'flux' and cfg.norm_groups != 32:
        return f"FLUX.1's code fixes GroupNorm at 32 groups, and this model has {cfg.norm_groups}"
    if fmt == 'cogvideox' and cfg.norm != 'clip':
        return "CogVideoX's norms take statistics over a whole chunk (norm 'clip'), and this model's are per frame"
    if fmt == 'cogvideox' and cfg.use_quant_conv:
        return "diffusers' AutoencoderKLCogVideoX sizes its quant convs for 3 channels, not the latent's"
    if fmt == 'cogvideox' and (cfg.chunk_frames, cfg.chunk_latents) != (8, 2):
        return (f"diffusers' AutoencoderKLCogVideoX encodes 8 frames and decodes 2 latent frames at a time, and this "
                f"model {cfg.chunk_frames} and {cfg.chunk_latents}")
    return None


def diffusers_config(cfg, video, scale, shift):
    """config.json of AutoencoderKL (image) or AutoencoderKLCogVideoX (video) for an autoencoder with config `cfg`."""
    n = len(cfg.ch_mult)
    common = {'in_channels': cfg.in_channels, 'out_channels': cfg.out_ch, 'block_out_channels': [cfg.ch * m for m in cfg.ch_mult],
              'layers_per_block': cfg.num_res_blocks, 'latent_channels': cfg.z_channels, 'act_fn': 'silu',
              'scaling_factor': scale, 'shift_factor': shift,
              'use_quant_conv': cfg.use_quant_conv, 'use_post_quant_conv': cfg.use_quant_conv}
    if video:
        return {'_class_name': 'AutoencoderKLCogVideoX', **common, 'down_block_types': ['CogVideoXDownBlock3D'] * n,
                'up_block_types': ['CogVideoXUpBlock3D'] * n, 'norm_num_groups': cfg.norm_groups, 'norm_eps': 1e-6,
                'temporal_compression_ratio': 2 ** cfg.temporal_levels}
    attn = [cfg.resolution // 2 ** i in cfg.attn_resolutions for i in range(n)]  # levels with CompVis' attention
    blocks = {'down_block_types': ['AttnDownEncoderBlock2D' if a else 'DownEncoderBlock2D' for a in attn],
              'up_block_types': ['AttnUpDecoderBlock2D' if a else 'UpDecoderBlock2D' for a in reversed(attn)],
              'norm_num_groups': cfg.norm_groups, 'mid_block_add_attention': cfg.attn_type == 'vanilla'}
    if cfg.regularizer == 'vq':  # VQModel: quant convs always, no shift
        common = {k: v for k, v in common.items() if k not in ('shift_factor', 'use_quant_conv', 'use_post_quant_conv')}
        return {'_class_name': 'VQModel', **common, **blocks, 'num_vq_embeddings': cfg.n_embed,
                'vq_embed_dim': cfg.z_channels}
    return {'_class_name': 'AutoencoderKL', **common, **blocks}


def main(argv=None):
    args = parse_args(argv)

    video = args.format == 'cogvideox'
    # the outputs first, so that a wrong --out costs nothing
    check_output(args.out, '--out', folder=args.format != 'flux')
    refuse_overlap(args.out, '--out', [(args.ckpt, '--ckpt')])
    (lock_file if args.format == 'flux' else lock_folder)(args.out, '--out')  # one export writes there at a time
    try:
        outputs = [args.out] if args.format == 'flux' else [os.path.join(args.out, n) for n in
                                                            ('diffusion_pytorch_model.safetensors', 'config.json')]
        refuse_to_overwrite(outputs, args.overwrite, flag='--out')
        try:
            cfg, state, config = read_autoencoder(args.ckpt, args.preset)
            if isinstance(cfg, VideoAEConfig) != video:
                die(f"{args.ckpt} is {'an image' if video else 'a video'} autoencoder; "
                    f"{'pass a train_ae.py --num_frames checkpoint' if video else 'write it with --format cogvideox'}.")
            preset = config['preset'] if config is not None else args.preset
            reason = unsupported(cfg, args.format)
            if reason:
                die(f"{args.ckpt} cannot be written as {FORMATS[args.format]}: {reason}.")
            ae = build_autoencoder(cfg, args.ckpt)
            load_ae_state_dict(ae, state)  # strict: the weights fit cfg
        except (FileNotFoundError, ValueError) as e:
            die(f"{e} (--ckpt {args.ckpt})")
        scale, shift = PUBLIC_LATENT_NORM.get(preset, (1.0, None))
        scale = args.scaling_factor if args.scaling_factor is not None else scale
        shift = args.shift_factor if args.shift_factor is not None else shift
        sd = ae.state_dict()

        if args.format == 'flux':
            params = dict(resolution=(config or {}).get('image_size', 256), in_channels=cfg.in_channels, ch=cfg.ch,
                          out_ch=cfg.out_ch, ch_mult=list(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks,
                          z_channels=cfg.z_channels, scale_factor=scale, shift_factor=shift or 0.0)  # FLUX's AutoEncoderParams
            with no_space_is_an_error(os.path.dirname(os.path.abspath(args.out))), atomic_write(args.out) as tmp:
                save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata={'ae_params': json.dumps(params)})
        else:
            weights, config_json = outputs
            with no_space_is_an_error(args.out):
                with atomic_write(weights) as tmp:  # whole or not at all, in the umask's mode (not 0600)
                    save_file(ldm_to_diffusers(sd, len(cfg.ch_mult)), tmp)
                with atomic_write(config_json) as tmp, open(tmp, 'w') as fh:
                    json.dump(diffusers_config(cfg, video, scale, shift), fh, indent=2)
        n_params = sum(v.numel() for v in sd.values())
        print(f"wrote {FORMATS[args.format]} ({n_params / 1e6:.2f}M parameters, scaling_factor {scale}, shift_factor "
              f"{shift}) to {args.out}")

    finally:
        release_lock(args.out)  # main() may be called again in this process

if __name__ == '__main__':
    main()

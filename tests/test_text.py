"""Specification of text and layout conditioning (LDM Sec. 3.3): tau_theta (model.TextEncoder) equals diffusers'
LDMBertModel, LDM's BERTEmbedder, weight for weight; the tokenizers equal the `tokenizers` / `transformers`
references; captions and layouts come from the embedded generator without changing its images; caption dropout and
classifier-free guidance on text follow their formulas."""
import json

import numpy as np
import pytest
import torch

from denoiser import TextEncoder
from utils.weights import ldmbert_to_ours, load_strictly


def ldmbert(vocab_size=50, max_length=12, dim=32, depth=2, heads=4, dim_head=8):
    """A small diffusers LDMBertModel with random weights everywhere (LayerNorms too), in eval mode."""
    pld = pytest.importorskip("diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion")
    cfg = pld.LDMBertConfig(vocab_size=vocab_size, max_position_embeddings=max_length, encoder_layers=depth,
                            encoder_ffn_dim=4 * dim, encoder_attention_heads=heads, head_dim=dim_head, d_model=dim)
    torch.manual_seed(0)
    ref = pld.LDMBertModel(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ref


def tokens_and_mask(B=3, L=12, vocab_size=50):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, vocab_size, (B, L), generator=g)
    mask = torch.arange(L)[None] < torch.tensor([L, 7, 3])[:B, None]  # (B, L): True = a real token
    return tokens.masked_fill(~mask, 0), mask


def test_text_encoder_equals_ldmbert():
    """Our tau_theta with an LDMBertModel's weights (weights.ldmbert_to_ours) computes LDMBertModel's output, with and
    without a padding mask, and the map covers every weight (load_strictly)."""
    ref = ldmbert()
    ours = TextEncoder(vocab_size=50, max_length=12, dim=32, depth=2, heads=4, dim_head=8).eval()
    load_strictly(ours, ldmbert_to_ours(ref.state_dict()), "LDMBertModel's weights", "")
    tokens, mask = tokens_and_mask()
    with torch.no_grad():
        for m in (None, mask):
            expected = ref(tokens, attention_mask=None if m is None else m.long(), return_dict=True).last_hidden_state
            got = ours(tokens, m)
            assert got.shape == (3, 12, 32)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # a prefix of the positions: a shorter sequence sees the first L learned positions
        torch.testing.assert_close(ours(tokens[:, :5]), ref(tokens[:, :5], return_dict=True).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_text_encoder_weights_into_ldmbert():
    """The other direction: our randomly initialised encoder's weights, renamed back, make LDMBertModel compute ours."""
    torch.manual_seed(2)
    ours = TextEncoder(vocab_size=50, max_length=12, dim=32, depth=2, heads=4, dim_head=8).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref = ldmbert()
    names = {next(iter(ldmbert_to_ours({k: None}))): k for k in ref.state_dict() if not k.startswith('to_logits')}
    sd = ref.state_dict()
    sd.update({names[k]: v for k, v in ours.state_dict().items()})
    ref.load_state_dict(sd)
    tokens, mask = tokens_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens, mask), ref(tokens, attention_mask=mask.long(), return_dict=True)
                                   .last_hidden_state, atol=1e-5, rtol=1e-5)


def test_text_encoder_refuses_too_many_tokens():
    enc = TextEncoder(vocab_size=10, max_length=4, dim=8, depth=1, heads=2, dim_head=4)
    with pytest.raises(ValueError, match="more than this encoder's 4 positions"):
        enc(torch.zeros(1, 5, dtype=torch.long))


# -----------------------------------------------------------------------------
# captions and layouts in the data

def test_scene_leaves_the_dead_leaves_image_unchanged():
    """Captions and layouts read the generator's own parameters: the images the other tests compare stay the same."""
    from utils.data import DeadLeaves, dead_leaves
    for seed, index, size in ((0, 0, 16), (3, 7, 32)):
        img, scene = dead_leaves(seed, index, size, scene=True)
        assert np.array_equal(img, dead_leaves(seed, index, size))
        areas = [d['area'] for d in scene['shapes']]
        assert areas == sorted(areas, reverse=True) and 0.9 < sum(areas) <= 1 + 1e-9  # what is seen, once each
        for d in scene['shapes']:
            x0, y0, x1, y1 = d['box']
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and d['area'] <= (x1 - x0) * (y1 - y0) + 1e-9
    plain, captioned = DeadLeaves(16), DeadLeaves(16, annotation='caption')
    item = captioned[5][0]
    assert torch.equal(item['image'], plain[5][0]) and isinstance(item['caption'], str)


def test_caption_and_layout_name_the_largest_shapes():
    from utils.data import LAYOUT_CLASSES, caption, colour_name, layout
    assert [colour_name(h, 0.5) for h in (0.0, 0.97, 1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6)] == \
        ['red', 'red', 'yellow', 'green', 'cyan', 'blue', 'magenta']
    assert colour_name(1 / 3, 0.1) == 'grey'
    shapes = [{'colour': 'red', 'kind': 'disk', 'area': 0.3, 'box': [0, 0, .5, .5]},
              {'colour': 'blue', 'kind': 'rectangle', 'area': 0.2, 'box': [.5, .5, 1, 1]},
              {'colour': 'green', 'kind': 'disk', 'area': 0.005, 'box': [.1, .1, .2, .2]}]
    scene = {'background': 'cyan', 'shapes': shapes}
    assert caption(scene) == 'a red disk and a blue rectangle on a cyan background'
    assert layout(scene, 8) == [(LAYOUT_CLASSES.index('red disk'), 0, 0, .5, .5),
                                (LAYOUT_CLASSES.index('blue rectangle'), .5, .5, 1, 1)]  # the speck is no object
    assert len(layout(scene, 1)) == 1


def write_images(root, names, size=(24, 12)):
    from PIL import Image
    for n in names:
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / n)


def test_folder_captions_sidecar_and_jsonl_and_missing_named(tmp_path, capsys):
    from utils.data import make_dataset
    write_images(tmp_path, ['a.png', 'b.png', 'c.png'])
    (tmp_path / 'a.txt').write_text('a red disk\n')
    (tmp_path / 'captions.jsonl').write_text(json.dumps({'file': 'b.png', 'caption': 'a blue rectangle'}) + '\n')
    ds = make_dataset(str(tmp_path), 8, annotation='caption')
    assert [ds[i][0]['caption'] for i in range(len(ds))] == ['a red disk', 'a blue rectangle']
    assert 'leaving out 1 of 3 images that have no caption (the first: c.png)' in capsys.readouterr().out
    (tmp_path / 'captions.jsonl').write_text('{"file": "b.png"}\n')
    with pytest.raises(SystemExit, match=r'captions.jsonl line 1 is not a JSON object with .file. and .caption.'):
        make_dataset(str(tmp_path), 8, annotation='caption')


def test_folder_layout_is_cropped_and_flipped_with_the_image(tmp_path):
    from utils.data import boxes_list, crop_boxes, make_dataset
    # a 24 x 12 image: its centre crop is x in [1/4, 3/4]; a box there covers the whole crop
    assert crop_boxes([(0, 0.25, 0.0, 0.75, 1.0), (1, 0.0, 0.0, 0.1, 1.0)], 24, 12, flip=False) == [(0, 0, 0, 1, 1)]
    assert crop_boxes([(0, 0.25, 0.0, 0.5, 0.5)], 24, 12, flip=True) == [(0, 0.5, 0.0, 1.0, 0.5)]
    write_images(tmp_path, ['a.png'])
    row = {'file': 'a.png', 'boxes': [['dog', 0.25, 0.0, 0.5, 0.5], ['cat', 0.5, 0.5, 0.75, 1.0]]}
    (tmp_path / 'layout.jsonl').write_text(json.dumps(row) + '\n')
    ds = make_dataset(str(tmp_path), 8, train=False, annotation='layout', max_objects=3)
    assert ds.layout_classes == ('cat', 'dog')
    assert boxes_list(ds[0][0]['boxes']) == [(1, 0.0, 0.0, 0.5, 0.5), (0, 0.5, 0.5, 1.0, 1.0)]
    row['boxes'][0][3] = 1.5
    (tmp_path / 'layout.jsonl').write_text(json.dumps(row) + '\n')
    with pytest.raises(SystemExit, match='a box of a.png lies outside the image'):
        make_dataset(str(tmp_path), 8, annotation='layout')


# -----------------------------------------------------------------------------
# tau_theta inside the denoiser

def text_unet(vocab_size=259, max_length=16):
    from denoiser import build_backbone
    torch.manual_seed(0)
    net = build_backbone('unet', 'tiny', 8, 4, 0, False, text_encoder={'vocab_size': vocab_size, 'max_length': max_length})
    with torch.no_grad():  # zero-initialised output convs would hide the context
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_tokens_reach_the_unet_through_tau():
    """UNet(tokens) = UNet(context = tau(tokens)), once per sampler (learned_conditioning), and tau trains jointly."""
    from denoiser import learned_conditioning
    from utils.tokenizer import ByteTokenizer
    net = text_unet()
    tokens, mask = ByteTokenizer().encode(["a red disk", "a blue rectangle on a green background"], 16)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    out = net(x, t, tokens=tokens, context_mask=mask)
    cond = learned_conditioning(net, {'tokens': tokens, 'context_mask': mask})
    assert set(cond) == {'context', 'context_mask'}
    torch.testing.assert_close(out, net(x, t, **cond))
    torch.testing.assert_close(out, net(x, t, context=net.cond_stage_model(tokens, mask), context_mask=mask))
    assert not torch.allclose(out[1], net(x, t, tokens=tokens.flip(0), context_mask=mask.flip(0))[1])
    out.square().mean().backward()
    assert net.cond_stage_model.token_embedding.weight.grad.abs().sum() > 0


def test_dit_refuses_text_in_one_sentence():
    from denoiser import build_backbone
    with pytest.raises(ValueError, match="DiT has no cross-attention, which text and layouts need"):
        build_backbone('dit', 'tiny', 8, 4, 0, False, text_encoder={'vocab_size': 259, 'max_length': 16})


# -----------------------------------------------------------------------------
# caption dropout

def test_caption_dropout_rate_and_null_sequence():
    """Each caption is dropped with probability p (the count lies in the binomial's 99.9% interval) and a dropped
    caption tokenises exactly as "" does, the null condition that guidance subtracts; a dropped layout has no box."""
    from utils import conditioning
    from utils.tokenizer import ByteTokenizer, LayoutTokenizer
    tok, n, p = ByteTokenizer(), 4000, 0.1
    cfg = conditioning.task_config('text', tokenizer=tok, max_length=24, cond_dropout_prob=p)
    captions = [f"a red disk number {i}" for i in range(n)]
    torch.manual_seed(0)
    tokens, mask = conditioning.tokenize(cfg, {'caption': captions}, dropout=p)
    null, null_mask = tok.encode([""], 24)
    dropped = (tokens == null).all(1)
    mean, sd = n * p, (n * p * (1 - p)) ** 0.5
    assert abs(dropped.sum().item() - mean) < 3.3 * sd  # a two-sided 99.9% interval
    assert torch.equal(mask[dropped], null_mask.expand(int(dropped.sum()), -1))
    kept = ~dropped
    assert torch.equal(tokens[kept], tok.encode([c for c, k in zip(captions, kept) if k], 24)[0])
    assert torch.equal(conditioning.tokenize(cfg, {'caption': captions[:50]}, dropout=0.0)[0],
                       tok.encode(captions[:50], 24)[0])  # sampling drops nothing
    lay = LayoutTokenizer(['disk', 'rectangle'], max_objects=2)
    cfg = conditioning.task_config('layout', tokenizer=lay, cond_dropout_prob=p)
    boxes = torch.tensor([[0, .1, .1, .5, .5], [1, .5, .5, 1, 1]]).expand(n, 2, 5)
    tokens, _ = conditioning.tokenize(cfg, {'boxes': boxes}, dropout=p)
    dropped = tokens.eq(lay.none).all(1)
    assert abs(dropped.sum().item() - mean) < 3.3 * sd


# -----------------------------------------------------------------------------
# the command line: train, resume exactly, sample with --prompt

TINY = ['--image_size', '16', '--batch_size', '4', '--num_workers', '0', '--device', 'cpu']


@pytest.fixture(scope='module')
def tiny_ae(tmp_path_factory):
    from tests.helpers import run
    d = tmp_path_factory.mktemp('text')
    run('train_ae.py', *TINY, '--out_dir', d / 'ae', '--max_steps', '1', '--lpips_weight', '0', '--eval_interval', '1',
        '--ckpt_interval', '1')
    return d


def losses(out_dir):
    from tests.helpers import train_rows
    return {s: r['loss'] for s, r in train_rows(out_dir).items()}


@pytest.mark.slow
@pytest.mark.parametrize('task, prompt', [('text', 'a red disk and a blue rectangle on a green background'),
                                          ('layout', 'red disk 0.1 0.1 0.6 0.6; blue rectangle 0.5 0.5 1 1')])
def test_cli_train_resume_exactly_and_sample_prompts(tiny_ae, task, prompt):
    """4 steps in one go == 2 steps then --resume to 4 (caption dropout, flips and noise all draw random numbers), and
    sample.py writes n samples per prompt with the prompts in sample order."""
    from tests.helpers import run
    d = tiny_ae
    common = [*TINY, '--ae', d / 'ae' / 'ckpt.pt', '--task', task, '--cond_dropout_prob', '0.5', '--num_samples', '2',
              '--sample_steps', '2', '--log_interval', '1', '--eval_interval', '100', '--ckpt_interval', '2']
    run('train_ldm.py', *common, '--out_dir', d / f'full_{task}', '--max_steps', '4')
    run('train_ldm.py', *common, '--out_dir', d / f'half_{task}', '--max_steps', '2')
    run('train_ldm.py', *common, '--out_dir', d / f'half_{task}', '--max_steps', '4', '--resume')
    full, half = losses(d / f'full_{task}'), losses(d / f'half_{task}')
    assert sorted(full) == [1, 2, 3, 4] and full == half
    a, b = (torch.load(d / f'{n}_{task}' / 'ckpt.pt', weights_only=True) for n in ('full', 'half'))
    assert any(k.startswith('cond_stage_model.') for k in a['model'])  # tau_theta is trained and saved with the UNet
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert a['config']['conditioning']['task'] == task
    out = d / f'samples_{task}'
    run('sample.py', '--ckpt', d / f'full_{task}' / 'ema.pt', '--prompt', prompt, '--prompt', '', '--n_samples', '2',
        '--steps', '2', '--cfg_scale', '3', '--device', 'cpu', '--out_dir', out)
    npz = np.load(out / 'samples.npz')
    assert npz['arr_0'].shape == (4, 16, 16, 3) and list(npz['prompts']) == [prompt, prompt, '', '']
    assert (out / 'prompts.txt').read_text().splitlines() == [prompt, prompt, '', '']
    if task == 'text':  # a checkpoint that records no tokenizer takes no prompt
        export = torch.load(d / f'full_{task}' / 'ema.pt', weights_only=True)
        del export['config']['conditioning']
        torch.save(export, d / 'no_tokenizer.pt')
        p = run('sample.py', '--ckpt', d / 'no_tokenizer.pt', '--prompt', prompt, '--device', 'cpu', '--out_dir',
                d / 'refused', check=False)
        assert p.returncode != 0 and 'records no tokenizer' in p.stderr and 'Traceback' not in p.stderr
    # another tokenizer (or any task setting) is not the run to resume
    flag = ['--max_length', '32'] if task == 'text' else ['--max_objects', '4']
    p = run('train_ldm.py', *common, *flag, '--out_dir', d / f'half_{task}', '--max_steps', '6', '--resume', check=False)
    assert p.returncode != 0 and 'was trained with the condition' in p.stderr and 'Traceback' not in p.stderr


@pytest.mark.parametrize('flags, message', [
    (['--task', 'text', '--model', 'dit'], 'needs cross-attention to its tokens, which only the UNet has'),
    (['--task', 'text', '--tokenizer', 'missing/vocab.txt'], 'does not exist.*bert-base-uncased'),
    (['--tokenizer', 'bytes'], '--tokenizer only applies to --task text')])
def test_cli_refuses_bad_text_flags_in_one_sentence(tmp_path, flags, message):
    import re
    from tests.helpers import run
    p = run('train_ldm.py', *TINY, '--ae', tmp_path / 'no_ae.pt', '--out_dir', tmp_path / 'out', *flags, check=False)
    assert p.returncode != 0 and re.search(message, p.stderr) and 'Traceback' not in p.stderr


def test_prompt_files_that_hold_nothing_are_one_sentence(tmp_path):
    from utils import conditioning
    from utils.tokenizer import ByteTokenizer
    cfg = conditioning.task_config('text', tokenizer=ByteTokenizer())
    empty = tmp_path / 'prompts.txt'
    empty.write_text('\n  \n')
    with pytest.raises(ValueError, match='holds no prompt; write one prompt a line'):
        conditioning.read_prompts(cfg, None, str(empty), '')
    with pytest.raises(ValueError, match='give it --prompt'):
        conditioning.read_prompts(cfg, None, None, '')
    items, null = conditioning.read_prompts(cfg, ['a'], None, 'b')
    assert items == [{'caption': 'a'}] and null == {'caption': 'b'}


@pytest.mark.slow
def test_reproduce_text_smoke(tmp_path):
    """The miniature at toy sizes: it trains, probes, scores and writes its report (what it measures needs the full
    size; this checks the pipeline end to end)."""
    from tests.helpers import run
    run('repro/reproduce_text.py', '--smoke', '--out_dir', tmp_path, '--cfg_scales', '1,3')
    report = json.loads((tmp_path / 'report.json').read_text())
    text, layout = report['text'], report['layout']
    assert text['probe']['n'] == 8 and 0 <= text['probe']['wilcoxon_p'] <= 1
    assert set(text['alignment']) == {'real', 'chance', 'samples, cfg 1', 'samples, cfg 3'}
    assert all(0 <= r['all'] <= 1 for r in text['alignment'].values())
    assert layout['probe']['n'] == 8 and set(layout['iou']) == set(text['alignment'])
    assert all(0 <= r['iou'] <= 1 for r in layout['iou'].values())
    assert (tmp_path / 'grid_text_cfg3.png').is_file() and (tmp_path / 'grid_layout_cfg3.png').is_file()
    assert 'Wilcoxon' in (tmp_path / 'report.md').read_text()


def test_box_iou_reads_the_largest_box_back_from_an_image_by_the_generators_colour_names():
    """The layout miniature's measure: a red square drawn on a grey ground is found where its box says (IoU 1), a box
    moved by half its width overlaps a third, and a colour that is not drawn scores 0."""
    from utils.data import box_iou, colour_names, _hsv_to_rgb
    x = torch.full((3, 32, 32), 0.0)  # mid grey: no hue
    x[:, 8:24, 8:24] = torch.tensor(_hsv_to_rgb(0.0, 0.8, 0.8), dtype=torch.float32)[:, None, None] * 2 - 1
    assert (colour_names(x)[8:24, 8:24] == 0).all() and (colour_names(x)[:8] == 6).all()  # red, and grey around
    assert box_iou(x, 'red rectangle 0.25 0.25 0.75 0.75; blue disk 0 0 1 1') == pytest.approx(1.0)
    assert box_iou(x, 'red disk 0.5 0.25 1.0 0.75') == pytest.approx(1 / 3)  # overlap 8 x 16 over 2 x 256 - 128
    assert box_iou(x, 'blue rectangle 0.25 0.25 0.75 0.75') == 0.0

"""KV-cache policies for scale-wise models (ScaleKV, HACK, SnapKV) and their calibration."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from arvision.bundled import bundled_model_dir
from arvision.cli import main
from arvision.errors import ArvisionError
from arvision.pipeline import ARPipeline
from arvision.sampling.kv_calibration import CALIBRATION_FILE, Calibration, calibrate, classify
from arvision.sampling.kv_policies import (
    HACK,
    CompressedCache,
    ScaleKV,
    SnapKV,
    parse_kv_policy,
    snap_select,
    window_positions,
)
from arvision.sampling.loop import generate
from arvision.schedules import Schedule


@pytest.fixture(scope="module")
def pipe():
    p = ARPipeline.from_pretrained(bundled_model_dir())
    p.kv_calibration = calibrate(p, samples=2, seed=0)
    return p


def sample(pipe, policy, n=6, precision="fp32"):
    gens = [torch.Generator().manual_seed(100 + i) for i in range(n)]
    return pipe([i % 10 for i in range(n)], generator=gens, output_type="tokens", kv_policy=policy,
                precision=precision)


class Keeper:
    """Wraps a policy to keep a handle on the cache it builds."""

    def __init__(self, policy):
        self.policy = policy

    def new_cache(self, transformer, schedule, batch, dtype, device):
        self.cache = self.policy.new_cache(transformer, schedule, batch, dtype, device)
        return self.cache


def run_steps(pipe, policy, labels=(1, 2), seed=3, on_step=None):
    """The one loop with a wrapped policy -> (result, cache)."""
    keeper = Keeper(policy)
    options = pipe.sampling_options(kv_policy=keeper)
    res = generate(pipe.transformer, pipe.inputs, pipe.condition(labels), options, torch.Generator().manual_seed(seed),
                   on_step=None if on_step is None else (lambda s, st, t: on_step(s, keeper.cache)))
    return res, keeper.cache


def test_full_budget_gives_the_full_cache_tokens_bit_identical(pipe):
    base = sample(pipe, None)
    for spec in ("scalekv:1", "snapkv:1", "hack:0"):
        out = sample(pipe, spec)
        assert torch.equal(out.tokens, base.tokens), spec
        # it really went through the compressed cache: the last step's keys are not stored
        assert 0 < out.stats["kv_cache_bytes"] < base.stats["kv_cache_bytes"]


def test_small_budget_changes_tokens_and_memory(pipe):
    base, small = sample(pipe, None), sample(pipe, "scalekv:0.1")
    assert not torch.equal(small.tokens, base.tokens)
    assert small.stats["kv_cache_bytes"] <= 0.15 * base.stats["kv_cache_bytes"]
    assert small.stats["kv_cache_bytes"] < small.stats["kv_transient_bytes"] < base.stats["kv_cache_bytes"]


def test_byte_accounting_is_exact(pipe):
    cfg, sched = pipe.transformer.cfg, pipe.schedule
    policy = SnapKV(0.2)
    seen = []

    def check(s, cache):
        held = sum(t.numel() * t.element_size() for row in cache.k + cache.v for t in row)
        assert cache.nbytes == held
        seen.append(held)

    res, cache = run_steps(pipe, policy, on_step=check)
    cap = int(0.2 * sched.length)
    rows, per_pos = 4, cfg.num_heads * cfg.head_dim * 4 * 2  # 2 images doubled by guidance; fp32 k + v
    lengths = [0 if s == sched.num_steps - 1 else (end if end <= cap else cap)
               for s, (_, end) in enumerate(sched.begin_ends)]
    assert seen == [cfg.depth * rows * per_pos * n for n in lengths]
    assert res.kv_cache_bytes == cache.peak_nbytes == max(seen)
    # transient: while layer l of step s attends, layers < l hold the new length, layers >= l the old one, and
    # layer l also holds (old + n_s) positions
    transient = 0
    for s, (begin, end) in enumerate(sched.begin_ends):
        old, new = (lengths[s - 1] if s else 0), lengths[s]
        for layer in range(cfg.depth):
            n_pos = layer * new + (cfg.depth - layer) * old + old + (end - begin)
            transient = max(transient, rows * per_pos * n_pos)
    assert res.kv_transient_bytes == cache.transient_peak_nbytes == transient


def test_window_is_the_centres_of_a_4x4_grid():
    assert window_positions(16, 16).tolist() == [r * 16 + c for r in (1, 5, 9, 13) for c in (1, 5, 9, 13)]
    assert window_positions(8, 8).tolist() == [r * 8 + c for r in (0, 2, 4, 6) for c in (0, 2, 4, 6)]
    assert window_positions(2, 2).tolist() == [0, 1, 2, 3]
    assert window_positions(1, 1).tolist() == [0]


def test_scalekv_selection_matches_brute_force():
    torch.manual_seed(0)
    sched = Schedule.scales((1, 2, 3, 8))
    s = 3
    n, hist = 64, 9  # current map 8x8 after a kept history of 9 positions
    B, H, hd = 2, 3, 4
    q, k = torch.randn(B, H, n, hd), torch.randn(B, H, hist + n, hd)
    cap, scale = 30, 0.7
    got = snap_select(q, k, scale, cap, sched, s)
    win = [hist + r * 8 + c for r in (0, 2, 4, 6) for c in (0, 2, 4, 6)]
    for b in range(B):
        for h in range(H):
            m = hist + n
            raw = [sum(float(q[b, h, w - hist] @ k[b, h, j]) * scale for w in win) for j in range(m)]
            raw = [float("-inf") if j in win else x for j, x in enumerate(raw)]
            pooled = [max(raw[max(0, j - 2):j + 3]) for j in range(m)]
            order = sorted((j for j in range(m) if j not in win), key=lambda j: -pooled[j])
            kept = got[b, h].tolist()
            assert kept == sorted(set(kept)) and len(kept) == cap and set(win) <= set(kept)
            # max-pooling makes ties: compare the kept scores with the brute-force top scores, not the indices
            top = order[:cap - len(win)]
            assert sorted(pooled[j] for j in kept if j not in win) == pytest.approx(sorted(pooled[j] for j in top))


def test_scalekv_caps_never_fall_below_the_window(pipe):
    policy = ScaleKV(0.05, pipe.kv_calibration)
    policy.prepare(pipe.transformer, pipe.schedule)
    for s, caps in enumerate(policy.caps):
        assert min(caps) >= len(window_positions(*pipe.schedule.step_grids[s]))


def test_scalekv_budgets_favour_drafters_and_keep_the_total(pipe):
    policy = ScaleKV(0.2, pipe.kv_calibration)
    policy.prepare(pipe.transformer, pipe.schedule)
    sched, depth = pipe.schedule, pipe.transformer.cfg.depth
    for s, (_, end) in enumerate(sched.begin_ends):
        caps = policy.caps[s]
        if end > policy.capacity:
            drafters = pipe.kv_calibration.drafters[s]
            assert drafters and all(caps[d] > caps[r] for d in drafters for r in range(depth) if r not in drafters)
            assert sum(caps) <= policy.capacity * depth


def test_hack_structural_heads_keep_first_two_scales_and_the_current_scale(pipe):
    sched = pipe.schedule
    policy = HACK(0.9, pipe.kv_calibration)
    checked = []

    def check(s, cache):
        if s == sched.num_steps - 1:
            return
        begin, end = sched.begin_ends[s]
        protected = set(range(min(end, sched.begin_ends[1][1]))) | set(range(begin, end))
        for layer, groups in enumerate(cache.groups):
            b_c, b_s = policy.budgets(layer, s, sched)
            for heads, pos in zip(groups, cache.pos[layer]):
                structural = policy.types[layer][int(heads[0])] == "structural"
                assert pos.shape[-1] == (min(end, b_s) if structural else min(end, b_c))
                if structural:
                    for row in pos.reshape(-1, pos.shape[-1]).tolist():
                        assert protected <= set(row)
                        checked.append((s, layer))

    run_steps(pipe, policy, on_step=check)
    compressed = [s for s, (_, end) in enumerate(sched.begin_ends[:-1]) if end > policy.capacity]
    assert compressed and {s for s, _ in checked} >= set(compressed)


def test_hack_contextual_heads_keep_fewer_positions(pipe):
    policy = HACK(0.8, pipe.kv_calibration)
    policy.prepare(pipe.transformer, pipe.schedule)
    s = pipe.schedule.num_steps - 2
    for layer in range(pipe.transformer.cfg.depth):
        b_c, b_s = policy.budgets(layer, s, pipe.schedule)
        assert b_c < b_s


def test_calibration_classifies_a_constructed_case_and_round_trips(tmp_path):
    steps, depth, heads = 4, 5, 4
    asi = torch.rand(steps, depth) + 1.0
    asi[1:, 3] = 0.1  # layer 3 spreads its attention over the history at every step: a drafter
    var = torch.ones(depth, heads)
    var[0, 1] = var[2, 2] = var[4, 0] = 0.01  # vertical (contextual) heads
    z, drafters, types = classify(asi, var, num_drafters=1, alpha=3 / 20)
    assert drafters == [[], [3], [3], [3]]
    ctx = {(layer, h) for layer in range(depth) for h in range(heads) if types[layer][h] == "contextual"}
    assert ctx == {(0, 1), (2, 2), (4, 0)}
    calib = Calibration(depth, heads, steps, 7, 1, 16, 0.15, 1, asi.tolist(), z.tolist(), drafters, var.tolist(),
                        types)
    assert Calibration.load(calib.save(tmp_path / "c.json")) == calib


def test_calibrate_kv_cli_writes_a_file_scalekv_then_finds(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), folder)
    (folder / CALIBRATION_FILE).unlink(missing_ok=True)
    assert main(["sample", str(folder), "--classes", "1", "--kv-policy", "scalekv:0.1", "--out",
                 str(tmp_path / "a.png")]) == 2
    assert "calibrate-kv" in capsys.readouterr().err
    assert main(["calibrate-kv", str(folder), "--samples", "2", "--seed", "0"]) == 0
    data = json.loads((folder / CALIBRATION_FILE).read_text())
    assert data["samples"] == 2 and len(data["drafters"]) == 6 and len(data["head_types"]) == 6
    assert main(["sample", str(folder), "--classes", "1", "2", "--kv-policy", "scalekv:0.1", "--out",
                 str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0


def test_bench_json_reports_policy_memory(capsys):
    def bench(*extra):
        assert main(["bench", "--classes", "3", "--warmup", "0", "--repeat", "1", "--no-decode", "--json",
                     *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    full, snap = bench(), bench("--kv-policy", "snapkv:0.1")
    assert snap["kv_cache_bytes"] <= 0.15 * full["kv_cache_bytes"]
    assert full["kv_transient_bytes"] == full["kv_cache_bytes"]
    assert snap["kv_cache_bytes"] < snap["kv_transient_bytes"]


def test_spec_errors(pipe, tmp_path):
    for spec, words in [("zip:0.1", "unknown KV-cache policy"), ("scalekv", "needs a number"),
                        ("scalekv:1.5", "0 < B <= 1"), ("hack:1", "fraction removed"), ("snapkv:0", "0 < B <= 1")]:
        with pytest.raises(ArvisionError, match=words):
            parse_kv_policy(spec, pipe)
    assert parse_kv_policy("full", pipe) is None
    assert isinstance(parse_kv_policy("hack:0.5", pipe), HACK)
    bare = ARPipeline(pipe.config)  # no folder, no calibration
    with pytest.raises(ArvisionError, match="calibrate-kv"):
        parse_kv_policy("scalekv:0.1", bare)
    raster = raster_pipe()
    with pytest.raises(ArvisionError, match="whole-scale steps"):
        parse_kv_policy("snapkv:0.1", raster)
    with pytest.raises(ArvisionError, match="whole-scale steps"):
        raster.transformer.new_cache(1, raster.schedule, policy=SnapKV(0.5))
    other = Calibration(**{**pipe.kv_calibration.__dict__, "depth": 99})
    with pytest.raises(ArvisionError, match="calibrate-kv"):
        ScaleKV(0.1, other).new_cache(pipe.transformer, pipe.schedule, 1, torch.float32, "cpu")


def test_select_reorders_rows(pipe):
    _, cache = run_steps(pipe, SnapKV(0.3), labels=(1, 2, 3))
    assert isinstance(cache, CompressedCache)
    before = [t.clone() for t in cache.pos[0]]
    cache.select(torch.tensor([2, 0]))
    assert torch.equal(cache.pos[0][0], before[0][[2, 0]])


def raster_pipe() -> ARPipeline:
    from arvision.config import ModelConfig, TokenizerConfig, TransformerConfig

    tok = TokenizerConfig(kind="vq", vocab_size=32, embed_dim=8, z_channels=16, ch=32, ch_mult=(1, 1),
                          num_res_blocks=1, attn_style="split", quant_conv_ks=1, l2_norm=True)
    tr = TransformerConfig(block="llama", width=64, depth=1, num_heads=2, vocab_size=32, num_classes=4,
                           in_channels=8)
    return ARPipeline(ModelConfig(family="llamagen", image_size=8, tokenizer=tok, transformer=tr))


def test_the_bundled_model_ships_its_calibration():
    bundled = ARPipeline.from_pretrained(bundled_model_dir())
    policy = parse_kv_policy("scalekv:0.1", bundled)
    assert isinstance(policy, ScaleKV) and policy.calibration.samples >= 1
    policy.calibration.check(bundled.transformer, bundled.schedule)
    out = bundled([4], generator=torch.Generator().manual_seed(0), output_type="tokens", kv_policy="hack:0.7")
    assert out.tokens.shape == (1, bundled.schedule.length)

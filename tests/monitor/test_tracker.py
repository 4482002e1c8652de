"""`CosmologyTracker` (framework-free): against closed forms, in plain PyTorch loops."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from cosmo_optim import Cosmology, CosmoSGD
from cosmo_optim.monitor import CosmologyTracker, scalar_tags


def data(n: int = 8, d: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x, torch.randn(n, 1, generator=g, dtype=dtype)


def train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_spectrum_and_amplitudes_of_a_linear_model_match_its_exact_kernel():
    torch.manual_seed(0)
    x, y = data()
    model = nn.Linear(3, 1).double()
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=3)
    s = tracker.read(0)
    # f = w·x + b has the constant NTK Θ = X Xᵀ + 1 1ᵀ (T4)
    kernel = x @ x.T + 1.0
    lam, vec = torch.linalg.eigh(kernel)
    lam, vec = lam.flip(0), vec.flip(1)
    assert s["ntk/lambda_1"] == pytest.approx(float(lam[0]))
    assert s["ntk/ratio_3"] == pytest.approx(float(lam[2] / lam[0]))
    assert s["cosmology/alpha_eff"] == pytest.approx(float(lam[0]) / 8)
    f = model(x).detach().reshape(-1)
    for k in range(3):  # f̃_k = u_kᵀ f (T7), up to the eigenvector's sign
        assert abs(s[f"modes/amplitude_{k + 1}"]) == pytest.approx(abs(float(vec[:, k] @ f)))
    assert s["cosmology/field"] == pytest.approx(float(f.mean()))
    assert s["ntk/kernel_distance"] == pytest.approx(0.0, abs=1e-12)


def test_discrete_prediction_is_exact_for_a_linear_model_trained_full_batch():
    """Constant NTK, quadratic loss, probe set = training set: the T10 map is exact."""
    torch.manual_seed(0)
    x, y = data()
    model = nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=4, every_n_steps=5)
    tracker.attach(opt)
    train(model, opt, x, y, 15)
    residuals = [r["scalars"].get("duality/residual") for r in tracker.history]
    assert residuals[0] is None and len(residuals) == 4
    assert max(residuals[1:]) < 1e-10
    assert tracker.history[-1]["scalars"]["duality/relative_residual"] < 1e-8


def test_hubble_rate_and_vacuum_energy_equal_the_optimiser_s_in_the_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    x, y = data(dtype=torch.float32)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = CosmoSGD(model.parameters(), vacuum_energy=2.0, time_step=0.1)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                               every_n_steps=4, sink=tmp_path, prefix="run/",
                               log_figures_every_n_steps=8)
    tracker.attach(opt)
    train(model, opt, x, y, 8)
    tracker.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert set(scalar_tags(2, prefix="run/")) <= set(acc.Tags()["scalars"])
    universe = Cosmology.from_vacuum_energy(2.0, time_step=0.1)
    hubble = acc.Scalars("run/cosmology/hubble_rate")
    assert [e.step for e in hubble] == [0, 4, 8]
    assert [e.value for e in hubble] == pytest.approx([universe.hubble_rate] * 3)
    assert [e.value for e in acc.Scalars("run/cosmology/vacuum_energy")] == pytest.approx([2.0] * 3)
    assert {"run/figures/potential", "run/figures/modes"} <= set(acc.Tags()["images"])


def test_figures_are_opt_in_and_drawn_at_their_steps_and_at_close(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = data(dtype=torch.float32)

    def images(log_dir, **kwargs):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
        tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=1,
                                   every_n_steps=2, sink=log_dir, **kwargs)
        tracker.attach(opt)
        train(model, opt, x, y, 7)  # probes at 0, 2, 4, 6
        tracker.close()
        acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
        acc.Reload()
        return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}

    assert images(tmp_path / "default") == {}
    drawn = images(tmp_path / "every4", log_figures_every_n_steps=4)
    assert drawn == {tag: [0, 4, 6] for tag in
                     ("figures/potential", "figures/spectrum", "figures/modes")}


def test_callable_sink_receives_every_probe():
    x, y = data(dtype=torch.float32)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    calls = []
    tracker = CosmologyTracker(model, probe_batch=(x, y), top_k=1, every_n_steps=3,
                               sink=lambda metrics, step: calls.append((step, metrics)))
    tracker.attach(opt)
    train(model, opt, x, y, 7)
    assert [step for step, _ in calls] == [0, 3, 6]
    assert calls[0][1]["cosmology/hubble_rate"] == pytest.approx(0.5 / (3 * 0.1))


@pytest.mark.parametrize("make_opt", [
    lambda p: CosmoSGD(p, vacuum_energy=3.0, time_step=0.1),
    lambda p: torch.optim.Adam(p, lr=1e-2),
], ids=["cosmosgd", "adam"])
@pytest.mark.filterwarnings("ignore:CosmologyTracker. no de Sitter dual")
def test_plain_loop_training_is_bitwise_identical_with_dropout(make_opt):
    x, y = data(16, dtype=torch.float32)

    def run(watch: bool):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        opt = make_opt(model.parameters())
        if watch:
            CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), every_n_steps=2).attach(opt)
        train(model, opt, x, y, 7)
        return model.state_dict(), torch.rand(3)

    (plain, r1), (watched, r2) = run(False), run(True)
    assert all(torch.equal(plain[k], watched[k]) for k in plain)
    assert torch.equal(r1, r2)


@pytest.mark.filterwarnings("ignore:CosmologyTracker. no de Sitter dual")
def test_adam_has_no_de_sitter_dual_but_still_logs_the_modes():
    x, y = data(dtype=torch.float32)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters())
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, every_n_steps=2)
    tracker.attach(opt)
    train(model, opt, x, y, 2)
    assert sorted(tracker.history[-1]["scalars"]) == sorted(scalar_tags(2, dual=False))
    assert tracker.cosmology() is None


@pytest.mark.parametrize("at", [7, 8, 9], ids=["between-probes", "after-velocity-forward", "at-a-reading"])
def test_state_dict_resume_continues_without_gaps_or_duplicates(at):
    x, y = data(dtype=torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    straight = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, every_n_steps=3)
    saved = {}

    def snapshot(*_):
        if straight.last_step == at:  # the tracker's hook ran first: step 8 recorded f_8
            saved.update(model=copy.deepcopy(model.state_dict()), opt=copy.deepcopy(opt.state_dict()),
                         tracker=copy.deepcopy(straight.state_dict()))

    straight.attach(opt)
    opt.register_step_post_hook(snapshot)
    train(model, opt, x, y, 12)

    model2 = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    model2.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    resumed = CosmologyTracker(model2, nn.MSELoss(), top_k=2, every_n_steps=3)
    resumed.load_state_dict(saved["tracker"])
    resumed.attach(opt2)
    train(model2, opt2, x, y, 12 - at)
    assert [r["step"] for r in resumed.history] == [0, 3, 6, 9, 12]
    # θ_ref, the last reading's weights, is not checkpointed (T12): after a resume between
    # readings the next reading has no residual; at a reading the weights are θ_ref themselves
    first_after = next(r["step"] for r in resumed.history if r["step"] > at) if at % 3 else None
    for a, b in zip(straight.history, resumed.history, strict=True):
        if b["step"] == first_after:
            assert set(a["scalars"]) - set(b["scalars"]) == {"duality/residual", "duality/relative_residual", "duality/rounding_floor"}
            a = {k: v for k, v in a["scalars"].items() if k in b["scalars"]}
            assert a == pytest.approx(b["scalars"], nan_ok=True)
            continue
        assert a["scalars"] == pytest.approx(b["scalars"], nan_ok=True)


def test_nonfinite_probe_warns_counts_and_is_skipped():
    x, y = data(dtype=torch.float32)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), every_n_steps=1)
    tracker.attach(opt)
    with torch.no_grad():
        saved = model.weight.clone()
        model.weight.fill_(float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite outputs or NTK at step 1; the reading is skipped"):
        assert tracker.step(1) == {"cosmology/nonfinite": 1.0}
    with torch.no_grad():
        model.weight.copy_(saved)
    s = tracker.step(2)
    assert s is not None and s["cosmology/nonfinite"] == 1.0 and "duality/residual" not in s
    assert [r["step"] for r in tracker.history] == [0, 2]
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: a diverged run skips silently after that
        assert tracker.step(3) == {"cosmology/nonfinite": 2.0}


def test_history_is_bounded_and_figures_are_drawn():
    x, _ = data(dtype=torch.float32)
    y = torch.randint(0, 3, (8,))
    model = nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    tracker = CosmologyTracker(model, nn.CrossEntropyLoss(), probe_batch=(x, y), top_k=3,
                               every_n_steps=1, history_size=3)
    tracker.attach(opt)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert [r["step"] for r in tracker.history] == [3, 4, 5]
    assert "cosmology/field" not in tracker.history[-1]["scalars"]  # C = 3 outputs
    assert sorted(tracker.figures()) == ["figures/modes", "figures/potential", "figures/spectrum"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, r"Invalid top_k: 0; it must be an integer ≥ 1"),
        ({"every_n_steps": -1}, r"Invalid every_n_steps: -1"),
        ({"every_n_steps": 4, "log_figures_every_n_steps": 6}, r"must be a multiple of every_n_steps=4"),
        ({"sink": 42}, r"Invalid sink: 42; give a SummaryWriter, a log directory, a callable"),
        ({"probe_batch": "text"}, r"Fix: pass probe_batch=\(inputs, targets\) explicitly"),
        ({"history_size": 0}, r"Invalid history_size: 0"),
    ],
)
def test_invalid_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosmologyTracker(nn.Linear(2, 1), **kwargs)


def test_attach_without_a_probe_batch_names_the_fix():
    model = nn.Linear(2, 1)
    tracker = CosmologyTracker(model)
    with pytest.raises(ValueError, match=r"attach\(\) needs a probe batch. Fix: pass probe_batch="):
        tracker.attach(torch.optim.SGD(model.parameters(), lr=0.1))


def test_importing_the_package_imports_no_framework():
    code = (
        "import sys, cosmo_optim, cosmo_optim.monitor, cosmo_optim.callbacks\n"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'tensorboard', 'transformers',"
        " 'torch.utils.tensorboard', 'matplotlib.pyplot') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _warnings_of(make_opt, steps=3, **kwargs):
    x, y = data()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    opt = make_opt(model)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, every_n_steps=1, **kwargs)
    with pytest.warns(UserWarning) as record:
        tracker.attach(opt)
        train(model, opt, x, y, steps)
        tracker.attach(opt)  # attaching again does not warn again
    return [str(w.message) for w in record if "CosmologyTracker" in str(w.message)], tracker


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
        lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.9),
        lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-3),
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, nesterov=True),
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, dampening=0.5),
    ],
)
def test_optimisers_without_a_heavy_ball_dual_warn_once_and_get_no_hubble_rate(make_opt):
    messages, tracker = _warnings_of(make_opt)
    assert len(messages) == 1
    assert "no de Sitter dual for " in messages[0]
    assert "still logged: cosmology/alpha_eff, cosmology/nonfinite" in messages[0]
    assert "duality/relative_residual" in messages[0]  # the residual needs no dual (T12)
    assert "ntk/lambda_1" in messages[0] and "cosmology/hubble_rate," not in messages[0]
    scalars = tracker.history[-1].scalars
    assert sorted(scalars) == sorted(scalar_tags(2, dual=False))
    assert tracker.efolds == 0.0


def test_param_groups_with_different_lr_or_momentum_warn_once_naming_the_group():
    def make(m):
        first, second = list(m.parameters())[:2], list(m.parameters())[2:]
        return torch.optim.SGD([{"params": first}, {"params": second, "lr": 0.2}], lr=0.1, momentum=0.9)

    messages, tracker = _warnings_of(make, group=1)
    assert len(messages) == 1
    assert "differ in (lr, momentum)" in messages[0] and "read from group 1 only" in messages[0]
    assert tracker.history[-1].scalars["cosmology/hubble_rate"] == Cosmology(0.2, 0.9).hubble_rate


def test_efolds_count_the_observed_optimiser_s_steps_only():
    x, y = data()
    model = nn.Linear(3, 1).double()
    other = nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.7)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.01, momentum=0.0)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=1, every_n_steps=2)
    tracker.observe(opt)
    for step in range(1, 5):
        train(model, opt, x, y, 1)
        train(other, opt2, x, y, 1)
        tracker.step(2 * step)  # e.g. a global step counting both optimisers
    assert tracker.efolds == pytest.approx(4 * 0.3 / 3, rel=1e-12)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1).double()

    def forward(self, x):
        return {"logits": self.net(x), "hidden": x}


def test_a_forward_returning_a_dict_needs_an_output_selector_and_then_matches_the_plain_model():
    x, y = data()
    model = DictModel()
    with pytest.raises(ValueError, match=r"the model returned a dict, not a Tensor of outputs. Fix: pass output='logits'"):
        CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2).read(0)
    by_key = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, output="logits").read(0)
    by_callable = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                                   output=lambda out: out["logits"]).read(0)
    plain = CosmologyTracker(model.net, nn.MSELoss(), probe_batch=(x, y), top_k=2).read(0)
    assert by_key == by_callable == plain


def test_a_loss_that_does_not_fit_the_outputs_is_one_line_naming_the_fix():
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    model = nn.Linear(3, 4).double()
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2)
    with pytest.raises(ValueError, match=r"the loss MSELoss does not give one value per sample on the model's outputs of shape \(8, 4\) with targets of shape \(8,\)") as error, pytest.warns(UserWarning):
        tracker.read(0)
    assert "\n" not in str(error.value)


def linear_two_outputs(d: int = 5, n: int = 6):
    """f = W x + b with C = 2 outputs: Θ_(ic),(jc') = δ_cc' (x_i·x_j + 1) (T4), so every
    eigenvalue of X Xᵀ + 1 1ᵀ appears twice."""
    torch.manual_seed(0)
    x, _ = data(n, d)
    model = nn.Linear(d, 2).double()
    lam = torch.linalg.eigvalsh(x @ x.T + 1.0).flip(0)
    return model, x, lam


def test_every_former_ntk_method_reads_the_exact_full_kernel(monkeypatch):
    """C = 2 outputs: the monitor reads the full kernel, exact (the closed form x xᵀ + 1 on
    each output), even where a former configuration asked for a sketch of k = 1 < C."""
    import cosmo_optim.monitor.reading as reading_module
    from cosmo_optim import empirical_ntk

    calls = []

    def engine(*args, **kwargs):
        calls.append((kwargs.get("method", "auto"), kwargs["output"]))
        return empirical_ntk(*args, **kwargs)

    monkeypatch.setattr(reading_module, "empirical_ntk", engine)
    model, x, lam = linear_two_outputs()
    with pytest.warns(DeprecationWarning):
        tracker = CosmologyTracker(model, probe_batch=x, top_k=2, ntk_method="sketch",
                                   sketch_dim=1)
    s = tracker.read(0)
    assert s["ntk/sketch_dim"] == 0 and tracker.history[-1].sketch_dim == 0
    assert s["ntk/lambda_1"] == pytest.approx(float(lam[0]), rel=1e-10)
    assert s["ntk/ratio_2"] == pytest.approx(1.0, rel=1e-10)  # the C = 2 degeneracy
    assert calls == [("auto", "full")]


def test_a_checkpoint_with_a_sketched_reference_starts_a_new_one_with_a_warning():
    """A run resumed from a checkpoint whose first reading was sketched (older versions): the
    exact kernel cannot be compared with it, so the drift tags restart from this reading."""
    model, x, _ = linear_two_outputs()
    old = CosmologyTracker(model, probe_batch=x, top_k=2)
    old.read(0)
    state = old.state_dict()
    state["reference"]["sketch_dim"] = 1
    resumed = CosmologyTracker(model, probe_batch=x, top_k=2)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match=r"kernel at step 5 is exact, the first reading's was a sketch with k = 1; .*the checkpoint's readings were sketched"):
        s = resumed.read(5)
    assert s["ntk/kernel_distance"] == pytest.approx(0.0, abs=1e-12)  # measured from this probe
    assert s["ntk/basis_rotation"] == pytest.approx(0.0, abs=1e-12)
    assert resumed.state_dict()["reference"]["sketch_dim"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.read(6)  # the same kernel as the new reference: no warning


def test_records_of_checkpoints_before_sketches_read_as_exact():
    from cosmo_optim.monitor import Reading

    model, x, _ = linear_two_outputs()
    tracker = CosmologyTracker(model, probe_batch=x, top_k=2)
    tracker.read(0)
    old = tracker.history[-1].as_dict()
    del old["sketch_dim"]
    assert Reading.from_dict(old).sketch_dim == 0


def test_the_former_names_probe_and_probe_record_warn_once_naming_the_new_ones():
    """A measurement at a step is a reading: `CosmologyTracker.read` and `Reading`; the former
    names still work, each with one DeprecationWarning naming its replacement."""
    import cosmo_optim.monitor as monitor
    from cosmo_optim.monitor import names

    names._warned.clear()
    x, y = data()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2)
    with pytest.warns(DeprecationWarning, match=r"CosmologyTracker\.probe is deprecated: it is now CosmologyTracker\.read") as caught:
        first, again = tracker.probe(0), tracker.probe(1)
    fresh = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2)
    assert len(caught) == 1 and first == fresh.read(0) and again is not None
    with pytest.warns(DeprecationWarning, match=r"ProbeRecord is deprecated: it is now cosmo_optim\.monitor\.Reading"):
        assert monitor.ProbeRecord is monitor.Reading


def test_a_reading_every_step_keeps_the_velocity_and_the_residual():
    """every_n_steps=1: each reading's ḟ uses the step before it, so Ω_φ at a step is the one a
    longer interval reads there, and every reading after the first has a residual."""
    def run(every):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
        x, y = torch.randn(32, 3), torch.randn(32, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), every_n_steps=every,
                                   top_k=2)
        tracker.attach(opt)
        for _ in range(6):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        tracker.close()
        return {r.step: r.scalars for r in tracker.history}

    every_step, every_other = run(1), run(2)
    assert [s for s, sc in every_step.items() if "duality/residual" in sc] == [1, 2, 3, 4, 5, 6]
    for step in (2, 4, 6):
        assert every_step[step]["cosmology/omega_phi"] == pytest.approx(
            every_other[step]["cosmology/omega_phi"], rel=1e-6)


def test_a_state_resumed_with_another_top_k_starts_a_new_reference_with_a_warning():
    """A checkpoint of a top_k=2 run loaded into a top_k=4 tracker: the next reading warns that
    the drift tags are measured from it, and follows 4 modes (it raised a size mismatch)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    first = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2)
    first.read(0)
    again = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=4)
    again.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match=r"follows 4 modes .* first reading 2"):
        scalars = again.read(1)
    assert "ntk/ratio_4" in scalars and scalars["ntk/basis_rotation"] == pytest.approx(0, abs=1e-6)


def test_a_group_the_optimiser_does_not_have_is_an_error_naming_the_range():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(torch.randn(4, 3), torch.randn(4, 1)),
                               group=3)
    with pytest.raises(ValueError, match=r"Invalid group=3: the optimiser has 1 param group.*\[0, 0\]"):
        tracker.attach(opt)


def test_the_former_names_warn_at_the_user_s_line_under_default_filters(tmp_path):
    """Python shows a DeprecationWarning by default only where it is attributed to __main__:
    a from-import of ProbeRecord and a call of tracker.probe must both be."""
    script = tmp_path / "old_names.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "from cosmo_optim.monitor import ProbeRecord\n"
        "from cosmo_optim import CosmologyTracker\n"
        "t = CosmologyTracker(nn.Linear(2, 1), None, probe_batch=(torch.randn(3, 2), None))\n"
        "t.probe(0)\n")
    err = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": ""}).stderr
    assert f"{script}:3: DeprecationWarning: cosmo_optim.monitor.ProbeRecord is deprecated" in err
    assert f"{script}:6: DeprecationWarning: CosmologyTracker.probe is deprecated" in err


def test_a_resume_whose_weights_are_loaded_after_attach_is_not_taken_for_the_reading_s():
    """The tracker's state says the run stopped right after the reading at step 6, but the
    model still has fresh weights at attach (its state is loaded after): taking them as that
    reading's θ_ref would give a wrong residual, so the tracker warns and measures none."""
    x, y = data(dtype=torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, every_n_steps=3)
    tracker.attach(opt)
    train(model, opt, x, y, 6)
    state, weights = copy.deepcopy(tracker.state_dict()), copy.deepcopy(model.state_dict())
    fresh = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9)
    resumed = CosmologyTracker(fresh, nn.MSELoss(), top_k=2, every_n_steps=3)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match=r"resumed at step 6, but the model's outputs.*load the model's state before"):
        resumed.attach(opt2)
    fresh.load_state_dict(weights)  # too late
    train(fresh, opt2, x, y, 3)
    assert "duality/residual" not in resumed.history[-1].scalars


def test_a_model_without_forward_mode_or_double_backward_rules_reads_without_the_residual():
    """nn.EmbeddingBag's backward has no derivative: J·v (T12) cannot be taken, so the readings
    go on without the duality test, with one warning naming it, instead of failing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))
    ids, y = torch.randint(0, 20, (8, 5)), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tracker = CosmologyTracker(model, nn.CrossEntropyLoss(), probe_batch=(ids, y), top_k=2,
                               every_n_steps=2)
    with pytest.warns(RuntimeWarning, match=r"duality test \(T12\) needs J·v.*embedding_bag"):
        tracker.attach(opt)
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(ids), y).backward()
            opt.step()
    assert [r.step for r in tracker.history] == [0, 2, 4] and tracker.failures == []
    assert all("duality/relative_residual" not in r.scalars for r in tracker.history)
    assert "ntk/lambda_1" in tracker.history[-1].scalars
    assert "not tested at any of 3 readings" in tracker.summary().table()


def test_a_log_directory_that_cannot_be_created_is_an_error_naming_the_sink(tmp_path):
    """A path under a file: the error (at the first reading, before training) names `sink`
    and the fix, not a bare NotADirectoryError from inside TensorBoard."""
    (tmp_path / "a_file").write_text("")
    model = nn.Linear(3, 1)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(torch.randn(4, 3),
                               torch.randn(4, 1)), sink=tmp_path / "a_file" / "runs")
    with pytest.raises(ValueError, match=r"Invalid sink: .*a_file/runs' cannot be a TensorBoard "
                                         r"log directory \(NotADirectoryError.*Fix: sink="):
        tracker.attach(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11's")
def test_a_model_that_fails_on_the_probe_batch_says_so_at_the_first_reading():
    """The model's own error (here a feature-size mismatch) is raised as it is, with a note
    naming the probe batch it was called on and the fix."""
    model = nn.Linear(4, 2)
    tracker = CosmologyTracker(model, nn.CrossEntropyLoss(),
                               probe_batch=(torch.randn(8, 5), torch.randint(0, 2, (8,))))
    with pytest.raises(RuntimeError, match="cannot be multiplied") as info:
        tracker.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    assert any("called on the probe batch, ModelInputs(N=8: (8, 5) float32" in note
               and "Fix: a probe batch shaped as the model's training batches" in note
               for note in info.value.__notes__)


def test_an_optimiser_of_another_model_is_warned_about_at_attach():
    """A notebook slip: the tracker of model A attached to model B's optimiser. A never moves,
    so the readings measure nothing; one warning names both. A's own optimiser: no warning."""
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    batch = (torch.randn(4, 3), torch.randn(4, 1))
    tracker = CosmologyTracker(a, nn.MSELoss(), probe_batch=batch)
    with pytest.warns(UserWarning, match=r"optimiser \(SGD\) updates none of the parameters of "
                                         r"the model given \(Linear\).*Fix"):
        tracker.attach(torch.optim.SGD(b.parameters(), lr=0.1))
    own = CosmologyTracker(a, nn.MSELoss(), probe_batch=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own.attach(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9))

"""Structured masks: channel groups, exact per-step counts, zero channels after BatchNorm, regrowth of
dense values, and compact export equal to the masked model."""
import pytest
import torch
import torch.nn as nn
import torchvision

from models import model_loader, model_spec
from utils.errors import BridgeError
from utils.compact import check_equivalence, export_compact, load_compact, save_compact
from utils.masks import count_pruned_params
from utils.structured import add_structured_masks, alive_channels, channel_groups, channel_sparsity, filter_counts, set_channels
from utils.structured_importance import prune_channels
from utils.regrowth.filters import FilterRegrower, group_capacities, restore_channels
from utils.regrowth.final_finetune import regrown_since, weight_masks


def input_size(name):
    return model_spec(name).input_size


def groups_of(name):
    """The channel groups of a registered model, traced on a fresh instance."""
    return channel_groups(model_loader(name), input_size(name))


def _randomise_bn(model):
    """Non-trivial BatchNorm statistics and affine values, so that an unmasked channel is never zero by luck."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            b = m.bias_orig if hasattr(m, "bias_orig") else m.bias
            w.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            b.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _masked(name, seed=0):
    torch.manual_seed(seed)
    return _randomise_bn(add_structured_masks(model_loader(name))).eval()


@pytest.mark.parametrize("name", ["vgg16", "resnet20", "effnet"])
def test_group_indices_agree_with_single_channel_queries(name):
    """The aligned index lists equal what the dependency graph gives for one channel at a time."""
    import torch_pruning as tp

    from models import model_spec

    model = model_loader(name).eval()
    size = model_spec(name).input_size
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, size, size))
    mods = dict(model.named_modules())
    names = {m: n for n, m in model.named_modules()}
    for g in groups_of(name)[::3]:
        for c in (0, g.size - 1):
            group = graph.get_pruning_group(mods[g.root], tp.prune_conv_out_channels, idxs=[g.convs[0][1][c]])
            single = {names.get(dep.target.module): [int(i) for i in idxs] for dep, idxs in group}
            for member, idxs in g.convs + g.norms:
                assert single[member] == [idxs[c]]


def test_resnet_stage_channels_are_coupled():
    groups = {g.root: g for g in groups_of("resnet20")}
    stem = groups["conv1"]
    assert {n for n, _ in stem.convs} == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert stem.cost == 4
    assert groups["layer2.0.shortcut.0"].cost == 4  # shortcut + three conv2 of stage 2
    assert groups["layer1.0.conv1"].cost == 1


@pytest.mark.parametrize("name", ["vgg16", "resnet20", "effnet"])
def test_pruned_channel_is_exactly_zero_after_batchnorm(name):
    model = _masked(name)
    groups = groups_of(name)
    prune_channels(model, input_size(name), 0.3, "l1")
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().clone()))  # before an in-place ReLU
             for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    for g in groups:
        dead = ~alive_channels(model, g)
        assert dead.any()
        for bn, idxs in g.norms:
            rows = [idxs[c] for c in torch.nonzero(dead).flatten().tolist()]
            assert torch.all(outs[bn][:, rows] == 0)
            live = [idxs[c] for c in torch.nonzero(~dead).flatten().tolist()]
            assert torch.all(outs[bn][:, live].abs().amax((0, 2, 3)) > 0)


def test_per_step_counts_are_exact():
    model = _masked("vgg16")
    groups = groups_of("vgg16")
    expected_alive = {g.root: g.size for g in groups}
    for step in range(3):
        prune_channels(model, input_size("vgg16"), 0.3, "l2")
        for g in groups:
            expected_alive[g.root] = int(expected_alive[g.root] * (1 - 0.3))  # Torch-Pruning's local rule
            assert int(alive_channels(model, g).sum()) == expected_alive[g.root]
    pruned, total = filter_counts(model)
    assert total == 4224 and pruned == 4224 - sum(expected_alive.values())
    assert round(channel_sparsity(model), 3) == 0.659  # the published VGG16 schedule: 0.301, 0.513, 0.659


def test_every_group_keeps_a_channel_and_linear_is_never_pruned():
    model = _masked("resnet20")
    groups = groups_of("resnet20")
    for _ in range(12):
        prune_channels(model, input_size("resnet20"), 0.5, "l1")
    assert all(int(alive_channels(model, g).sum()) == 1 for g in groups)
    assert torch.all(model.linear.weight_mask == 1)


def test_models_without_traceable_channel_groups_are_one_clear_error():
    """Torch-Pruning fails inside its tracer on shufflenet's channel shuffle; a network whose convs all feed a
    linear's outputs has no group to cut. Both: one BridgeError naming the way out, not a traceback."""
    with pytest.raises(BridgeError, match=r"cannot trace the channel coupling of ShuffleNetV2 \(ZeroDivisionError"):
        channel_groups(torchvision.models.shufflenet_v2_x0_5(num_classes=10), 32)
    with pytest.raises(BridgeError, match="has no prunable channel groups.*prune_unstructure.py"):
        channel_groups(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)), 8)


def test_a_step_that_would_empty_a_layer_leaves_its_group_untouched():
    """int(16 * 0.05) = 0 channels left: Torch-Pruning skips such a group (check_pruning_group), as published."""
    model = _masked("resnet20")
    prune_channels(model, input_size("resnet20"), 0.95, "l1")
    for g in groups_of("resnet20"):
        keep = int(g.size * (1 - 0.95))
        assert int(alive_channels(model, g).sum()) == (keep if keep else g.size)


def test_global_scope_prunes_the_requested_channels():
    model = _masked("vgg16")
    removed = prune_channels(model, input_size("vgg16"), 0.4, "lamp", scope="global")
    assert removed == 4224 - int(4224 * (1 - 0.4))  # vgg16 has no coupled groups: channels = filters
    assert filter_counts(model)[0] == removed


def _published_l1_group_score(model, g):
    """Group L1 written out: mean over members of Σ|filter| (convs), |γ| (BatchNorm), Σ|column| (consumers), / mean."""
    mods = dict(model.named_modules())
    weight = lambda m: (m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight).detach()  # noqa: E731
    terms = [weight(mods[n])[list(i)].abs().flatten(1).sum(1) for n, i in g.convs]
    terms += [weight(mods[n])[list(i)].abs() for n, i in g.norms]
    terms += [weight(mods[n]).transpose(0, 1)[list(i)].abs().flatten(1).sum(1) for n, i in g.consumers]
    score = torch.stack(terms).mean(0)
    return score / score.mean()


def test_l1_importance_scores_the_whole_group():
    """The stem group of resnet20 (4 convs, 4 BatchNorms, 7 consumers): the lowest group-L1 channels go."""
    model = _masked("resnet20")
    stem = next(g for g in groups_of("resnet20") if g.root == "conv1")
    score = _published_l1_group_score(model, stem)
    prune_channels(model, input_size("resnet20"), 0.25, "l1")
    dead = ~alive_channels(model, stem)
    assert int(dead.sum()) == 4
    assert score[dead].max() <= score[~dead].min()
    # a filter-only score would pick other channels here: the BatchNorm and consumer terms matter
    filters_only = torch.stack([dict(model.named_modules())[n].weight_orig.detach()[list(i)].abs().flatten(1).sum(1)
                                for n, i in stem.convs]).mean(0)
    assert set(torch.topk(filters_only, 4, largest=False).indices.tolist()) != set(torch.nonzero(dead).flatten().tolist())


def test_regrown_filters_take_dense_values():
    torch.manual_seed(0)
    dense = _randomise_bn(model_loader("resnet20")).eval()
    dense_state = {k: v.clone() for k, v in dense.state_dict().items()}
    sparse = model_loader("resnet20")
    sparse.load_state_dict(dense_state)
    add_structured_masks(sparse)
    groups = groups_of("resnet20")
    prune_channels(sparse, input_size("resnet20"), 0.5, "l1")
    with torch.no_grad():  # training moved the weights since pruning
        for n, p in sparse.named_parameters():
            p.mul_(0.5)
    g = next(g for g in groups if g.root == "layer2.0.shortcut.0")
    caps = group_capacities(sparse, [g])
    dead = torch.nonzero(~alive_channels(sparse, g)).flatten().tolist()
    scores = {g.root: torch.arange(g.size, dtype=torch.float)}  # higher index = more salient
    regrower = FilterRegrower([g], scores, dense_state)
    start_masks = weight_masks(sparse)
    regrown, filters = regrower.apply(sparse, {g.root: 2 * g.cost})
    chans = regrown[g.root].tolist()
    # what --finetune_scope regrown trains: every weight of the restored filters, in each conv of the group
    mods = dict(sparse.named_modules())
    expected = {}
    for name, idxs in g.convs:
        per_row = mods[name].weight_orig[0].numel()
        expected[name] = sorted(idxs[c] * per_row + j for c in chans for j in range(per_row))
    assert {n: sorted(i.tolist()) for n, i in regrown_since(start_masks, sparse).items()} == expected
    dead_before = 16  # 32 channels, half pruned
    assert len(chans) == 2 and filters == 2 * g.cost and caps[g.root] == dead_before * g.cost
    mods = dict(sparse.named_modules())
    for name, idxs in g.convs:
        rows = [idxs[c] for c in chans]
        assert torch.equal(mods[name].weight_orig[rows], dense_state[f"{name}.weight"][rows])
        assert torch.all(mods[name].weight_mask[rows] == 1)
    for name, idxs in g.norms:
        rows = [idxs[c] for c in chans]
        for p in ("weight", "bias"):
            assert torch.equal(getattr(mods[name], p + "_orig")[rows], dense_state[f"{name}.{p}"][rows])
        assert torch.equal(mods[name].running_var[rows], dense_state[f"{name}.running_var"][rows])
    for name, idxs in g.consumers:
        cols = [idxs[c] for c in chans]
        assert torch.equal(mods[name].weight_orig[:, cols], dense_state[f"{name}.weight"][:, cols])
    assert chans == sorted(dead)[-2:][::-1]  # the highest-scored pruned channels came back
    assert int(alive_channels(sparse, g).sum()) == 18


@pytest.mark.parametrize("name", ["vgg16", "resnet20", "effnet"])
def test_compact_model_matches_masked_model(name, tmp_path):
    model = _masked(name)
    prune_channels(model, input_size(name), 0.5, "l1")
    compact = export_compact(model, input_size(name))
    assert check_equivalence(model, compact, 32) < 1e-4
    full = sum(p.numel() for p in model_loader(name).parameters())
    assert sum(p.numel() for p in compact.parameters()) < 0.5 * full
    save_compact(tmp_path / "c.pth", compact, name, model, input_size(name))
    again, ckpt = load_compact(tmp_path / "c.pth")
    assert ckpt["model"] == name
    assert check_equivalence(model, again, 32) < 1e-4


def test_set_channels_round_trip():
    model = _masked("vgg16")
    g = groups_of("vgg16")[0]
    set_channels(model, g, [0, 5], alive=False)
    assert alive_channels(model, g).tolist().count(False) == 2
    assert count_pruned_params(model)[2] == 2 * 27  # two 3x3x3 filters
    restore_channels(model, g, [0, 5], {k: v for k, v in model_loader("vgg16").state_dict().items()}, "zero")
    assert bool(alive_channels(model, g).all())


def _published_pruning(model, name, criterion, ratio, steps, batches, global_pruning=False):
    """The published pipeline on a plain copy: a new MagnitudePruner per step, filters removed physically,
    dense indices tracked per conv as the published index maps do. Returns {conv: surviving dense rows} after each step."""
    import torch.nn.functional as F
    import torch_pruning as tp

    from models import model_spec

    size = model_spec(name).input_size
    names = {m: n for n, m in model.named_modules()}
    survivors = {n: list(range(m.out_channels)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    importances = {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                   "lamp": tp.importance.LAMPImportance, "taylor": tp.importance.TaylorImportance,
                   "hessian": tp.importance.HessianImportance}
    history = []
    for _ in range(steps):
        importance = importances[criterion]()
        model.train()
        model.zero_grad()
        for x, y in batches if criterion in ("taylor", "hessian") else []:
            if criterion == "taylor":
                F.cross_entropy(model(x), y).backward()
            else:
                for loss in F.cross_entropy(model(x), y, reduction="none"):
                    model.zero_grad()
                    loss.backward(retain_graph=True)
                    importance.accumulate_grad(model)
        model.eval()
        pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, size, size), importance=importance, iterative_steps=1,
                                           pruning_ratio=ratio, global_pruning=global_pruning,
                                           ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)])
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                if isinstance(dep.target.module, nn.Conv2d) and dep.handler == tp.prune_conv_out_channels:
                    conv = names[dep.target.module]
                    gone = {int(i) for i in idxs}
                    survivors[conv] = [d for k, d in enumerate(survivors[conv]) if k not in gone]
            group.prune()
        history.append({n: list(s) for n, s in survivors.items()})
    return history


def _pruned_rows(masked):
    return {n: torch.nonzero(m.weight_mask.reshape(m.weight_mask.shape[0], -1).amax(1) == 0).flatten().tolist()
            for n, m in masked.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("criterion", ["l1", "l2", "lamp", "taylor", "hessian"])
@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
def test_pruned_filters_equal_torch_pruning_magnitude_pruner(name, criterion):
    """One and two steps of 0.3: the channels masked here are the filters the published pipeline removes."""
    from utils.masks import unmasked_state_dict

    masked = _masked(name, seed=1)
    plain = model_loader(name)
    plain.load_state_dict(unmasked_state_dict(masked.state_dict()))
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g))]
    survivors = _published_pruning(plain, name, criterion, 0.3, 2, batches)
    widths = {n: m.out_channels for n, m in masked.named_modules() if isinstance(m, nn.Conv2d)}
    for step in range(2):
        prune_channels(masked, input_size(name), 0.3, criterion, batches=batches)
        ours = _pruned_rows(masked)
        published = {n: sorted(set(range(widths[n])) - set(s)) for n, s in survivors[step].items()}
        assert ours == published, f"step {step + 1}"
        for grp in groups_of(name):  # and group by group, the coupled members agree
            dead = torch.nonzero(~alive_channels(masked, grp)).flatten().tolist()
            for conv, idxs in grp.convs:
                assert sorted(idxs[c] for c in dead) == published[conv]


def test_global_scope_equals_torch_pruning_global_ranking():
    from utils.masks import unmasked_state_dict

    masked = _masked("resnet20", seed=3)
    plain = model_loader("resnet20")
    plain.load_state_dict(unmasked_state_dict(masked.state_dict()))
    survivors = _published_pruning(plain, "resnet20", "l1", 0.3, 1, [], global_pruning=True)
    prune_channels(masked, input_size("resnet20"), 0.3, "l1", scope="global")
    widths = {n: m.out_channels for n, m in masked.named_modules() if isinstance(m, nn.Conv2d)}
    assert _pruned_rows(masked) == {n: sorted(set(range(widths[n])) - set(s)) for n, s in survivors[0].items()}

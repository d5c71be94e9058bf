"""Which columns of an exported program depend on which input feature, up to where features mix."""

import pytest
import torch
from torch import nn

from hawkeye_dagster.analysis.feature_prefix import linear_frontier

F = 6


def _module(net: nn.Module) -> torch.fx.GraphModule:
    batch = torch.export.Dim("batch")
    return torch.export.export(net.eval(), (torch.rand(4, F),),
                               dynamic_shapes=({0: batch},)).module()


class _Columns(nn.Module):
    """Every kind of per-feature op, cat into one linear layer."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(F)
        self.register_buffer("pick", torch.tensor([0, 2]))
        self.layer = nn.Linear(F + 5, 3)

    def forward(self, x):
        scaled = self.norm(x).clamp(-3, 3)
        counts = torch.log1p(x[:, [1, 4]].abs())
        last = x[:, 5].unsqueeze(1) * 2
        picked = torch.nan_to_num(x.index_select(1, self.pick))
        return self.layer(torch.cat([scaled, counts, last, picked], 1)).relu().sum(-1)


def test_each_column_is_traced_to_its_feature():
    frontier = linear_frontier(_module(_Columns()))
    assert frontier is not None and len(frontier.linears) == 1
    (layer,) = frontier.linears
    assert layer.features.tolist() == [0, 1, 2, 3, 4, 5, 1, 4, 5, 0, 2]
    assert layer.weight.shape == (3, F + 5)


class _TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide, self.deep = nn.Linear(2, 1), nn.Linear(F, 1)

    def forward(self, x):
        return (self.wide(x[:, 3:5]) + self.deep(x - 1)).squeeze(-1)


def test_every_layer_of_the_frontier_is_found():
    frontier = linear_frontier(_module(_TwoLayers()))
    assert [layer.features.tolist() for layer in frontier.linears] == [[3, 4], list(range(F))]


class _Mixing(nn.Module):
    def __init__(self, mix):
        super().__init__()
        self.mix, self.layer = mix, nn.Linear(F, 1)

    def forward(self, x):
        return self.layer(self.mix(x)).squeeze(-1)


@pytest.mark.parametrize("mix", [
    nn.LayerNorm(F),
    lambda x: x - x.mean(dim=1, keepdim=True),          # a reduction over features
    lambda x: torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1),  # two features in one column
    lambda x: x.flip(1) + x,                            # columns swapped, then combined
])
def test_ops_that_mix_features_end_the_shortcut(mix):
    assert linear_frontier(_module(_Mixing(mix))) is None


def test_an_input_that_reaches_the_output_unmixed_has_no_linear_frontier():
    class Direct(nn.Module):
        def forward(self, x):
            return (x * 2)[:, 0]
    assert linear_frontier(_module(Direct())) is None
    assert linear_frontier(_Columns()) is None  # an eager module is not an FX graph

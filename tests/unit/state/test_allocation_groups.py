"""The allocation group of a campaign's orders in a segment (state/buckets.py): names may hold
any character (SPEC §1), the separator too, and the segment rows' allocated spend reads the
campaign and the segment back from it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kpistream.state.buckets import GROUP_SEP, allocation_group, split_allocation_group

names = st.text(alphabet=st.sampled_from(["a", "1", GROUP_SEP, ":", "|", "é"]), max_size=6)


@given(names, names)
def test_the_campaign_and_segment_are_read_back_from_their_group(campaign: str,
                                                                  segment: str) -> None:
    assert split_allocation_group(allocation_group(campaign, segment)) == (campaign, segment)


@given(names, names, names, names)
def test_two_pairs_never_share_a_group(c1: str, s1: str, c2: str, s2: str) -> None:
    if (c1, s1) != (c2, s2):
        assert allocation_group(c1, s1) != allocation_group(c2, s2)


def test_a_plain_name_keeps_the_form_earlier_versions_wrote() -> None:
    assert allocation_group("cmp-1", "vip") == f"cmp-1{GROUP_SEP}vip"
    assert allocation_group("cmp-1", f"v{GROUP_SEP}ip") == f"cmp-1{GROUP_SEP}v{GROUP_SEP}ip"
    assert split_allocation_group(f"cmp-1{GROUP_SEP}vip") == ("cmp-1", "vip")

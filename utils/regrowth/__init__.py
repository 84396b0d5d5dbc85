"""Regrowth: what comes back into a pruned model, and the stages that search for it.

    weights.py, filters.py   weight regrowth (saliency, init strategies) and filter (channel-group) regrowth
    kinds.py                 the unit of regrowth (weights / filters): capacities, SSIM, selection, restore
    proxies.py               how an episode scores an allocation (--reward_proxy)
    search.py                the environment and the episode loop (allocate, regrow, score, update the policy)
    flags.py, setup.py       the scripts' shared flags; what a run loads once and the search pieces
    final_finetune.py        the finetune after regrowth
    oneshot.py, iterative.py the two regrowth stages; outputs.py what they write

Imports point down this list (a stage imports the pieces above it, never the reverse).
"""

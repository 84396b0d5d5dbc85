"""Regrowth: what comes back into a pruned model, and the stages that search for it.

    weights.py, filters.py   weight regrowth (saliency, init strategies) and filter (channel-group) regrowth
    kinds.py                 the unit of regrowth (weights / filters): capacities, SSIM, selection, restore
    proxies.py               how an episode scores an allocation (--reward_proxy)
    env.py                   an episode: allocation in, regrown model scored, reward out
    search.py                the episode loop (sample, evaluate over processes, update the policy, resume)
    hparams.py, setup.py     the stages' typed hyper-parameters (flags, defaults, validation); what a run loads
                             once and the search pieces built from them
    final_finetune.py        the finetune after regrowth
    outputs.py               checkpoints with their training FLOPs, search plots, summary.json (RunSummary) and
                             search_summary.txt
    oneshot.py, iterative.py the two regrowth stages

A module imports only the ones listed before it.
"""

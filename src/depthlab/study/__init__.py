"""`depthlab study`: the five levers side by side at a parameter budget, and a recommendation from their verdicts
(design → runner → decide → report; see depthlab.study.design)."""

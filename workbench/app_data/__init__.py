"""Everything the Streamlit app shows, computed without Streamlit: one module per page.

`app.py` and `app_pages/` are presentation only: they call these functions, hand the arrays and
strings to the figure builders of `workbench.viz` (the CircuitsVis seam: figures never see a
model), and turn `AppInputError` into messages. Everything here is importable and testable from
plain Python or a notebook. The modules mirror `app_pages/`:

- `common`: where checkpoints and results live, `AppInputError`, a loaded model with its lock;
- `overview`: the checkpoint catalog and the NLL table of the bundled checkpoints;
- `study`: the length-effect study's results (runs, gaps over seeds, curves, emergence) and its verdict;
- `probes`: probe results (committed, or a quick estimate), and the one reader of labels and of
  chance values;
- `heads`: per-head frames and grids for the Head specialisation page;
- `text`, `samples`: text, orders and one sequence through the model for the Sample browser;
- `causal`: ablation / knockout results and live interventions;
- `divergence`: the model-free divergence of "near the target" and "recent";
- `export`: what the pages offer for download (frames, arrays, figures, a Python snippet).

Where the probes (`workbench.probing`) already compute something, these call them: `run_probes`
for a quick estimate, `pattern_stats` for the four parts of one displayed row, `set_masks` for the
sets, `intervention_hook` / `mean_z` for live causal checks (`workbench.stats.window_mean` for their intervals), `order_divergence` and
`nearest_keys` for the divergence. `from workbench import app_data` gives every public name.
"""

from workbench.app_data.causal import *  # noqa: F403
from workbench.app_data.common import *  # noqa: F403
from workbench.app_data.divergence import *  # noqa: F403
from workbench.app_data.export import *  # noqa: F403
from workbench.app_data.heads import *  # noqa: F403
from workbench.app_data.overview import *  # noqa: F403
from workbench.app_data.probes import *  # noqa: F403
from workbench.app_data.samples import *  # noqa: F403
from workbench.app_data.study import *  # noqa: F403
from workbench.app_data.text import *  # noqa: F403

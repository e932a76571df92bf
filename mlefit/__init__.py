"""mlefit: maximum-likelihood fitting on JAX.

A model is the log-density of ONE observation, ``log p(x; w)`` or ``log p(y | x; w)``;
:func:`fit` minimises the mean negative log-likelihood with optax in one compiled call.
"""

from ._xla_flags import set_default_flags as _set_default_flags

_set_default_flags()  # before any JAX computation starts the backend

from . import closed_form as closed_form
from . import datasets as datasets
from . import info as info
from . import models as models
from . import plot as plot
from ._bootstrap import bootstrap as bootstrap
from ._cache import disable_compilation_cache as disable_compilation_cache
from ._cache import enable_compilation_cache as enable_compilation_cache
from ._checkpoint import checkpoint_info as checkpoint_info
from ._constraints import Interval as Interval
from ._constraints import Positive as Positive
from ._distributed import ShardedData as ShardedData
from ._distributed import data_mesh as data_mesh
from ._distributed import init_distributed as init_distributed
from ._distributed import shard as shard
from ._distributed import shard_local as shard_local
from ._fit import fit as fit
from ._labelled import LabelledArray as LabelledArray
from ._likelihood import loglik as loglik
from ._likelihood import nll as nll
from ._lrtest import lr_test as lr_test
from ._many import fit_many as fit_many
from ._model import AbstractModel as AbstractModel
from ._result import FitResult as FitResult
from ._solver_subsampled import SubsampledNewton as SubsampledNewton
from ._sources import ArrayStream as ArrayStream
from ._sources import batches as batches
from ._status import Status as Status
from ._stream import stream_hessian as stream_hessian
from ._stream import stream_nll as stream_nll
from ._stream import stream_value_and_grad as stream_value_and_grad

__version__ = "0.1.0"

"""Ready-made models for :func:`mlefit.fit`: ``mlefit.fit(mlefit.models.Gamma(), x)``.

Each model is an :class:`mlefit.AbstractModel` with ``log_prob(params, *obs)`` (one
observation), a data-driven ``init(*data)`` (no start needed from the user),
``check_data(*data)`` (``ValueError`` naming the model, the first offending index and
its value, before anything compiles) and ``sample(key, params, n)`` (draws in the layout
``fit`` takes). Parameters are dicts with readable, scipy-compatible names; each class
documents its parameters, their constraints and its log-density.

- Unconditional, continuous: Normal, LogNormal, Exponential, Gamma, Weibull, Beta,
  StudentT, Laplace, MultivariateNormal.
- Unconditional, discrete: Bernoulli, Categorical, Poisson, NegativeBinomial.
- Mixtures: Mixture([...]).
- Conditional ``p(y | x)``, data ``(X, y)``: LinearGaussian, Logistic, Softmax,
  PoissonRegression, MLPClassifier.
- Censoring: Censored(model), data ``(x, censor)``.
"""

from ._censored import Censored as Censored
from ._conditional import AbstractConditionalModel as AbstractConditionalModel
from ._conditional import LinearGaussian as LinearGaussian
from ._conditional import Logistic as Logistic
from ._conditional import MLPClassifier as MLPClassifier
from ._conditional import PoissonRegression as PoissonRegression
from ._conditional import Softmax as Softmax
from ._continuous import Beta as Beta
from ._continuous import Exponential as Exponential
from ._continuous import Gamma as Gamma
from ._continuous import Laplace as Laplace
from ._continuous import LogNormal as LogNormal
from ._continuous import MultivariateNormal as MultivariateNormal
from ._continuous import Normal as Normal
from ._continuous import StudentT as StudentT
from ._continuous import Weibull as Weibull
from ._discrete import Bernoulli as Bernoulli
from ._discrete import Categorical as Categorical
from ._discrete import NegativeBinomial as NegativeBinomial
from ._discrete import Poisson as Poisson
from ._mixture import Mixture as Mixture

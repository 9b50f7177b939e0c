"""Settings for the whole test run, doctests included."""

import jax

# Mixed dtypes must be cast on purpose, never promoted by accident.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

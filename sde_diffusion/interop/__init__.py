"""Optional adapters to other libraries, imported only when used.

* [`sde_diffusion.interop.diffusers`][sde_diffusion.interop.diffusers] -- schedules from diffusers scheduler configs, a
  [`Model`][sde_diffusion.models.Model] from a diffusers network (with classifier-free guidance), and
  [`SDEScheduler`][sde_diffusion.interop.diffusers.SDEScheduler], a diffusers scheduler that runs any of our
  fixed-grid solvers inside an existing pipeline. Needs the ``diffusers`` extra (``pip install
  sde-diffusion[diffusers]``).

Importing [`sde_diffusion`][sde_diffusion] (or this package) does not import diffusers;
``sde_diffusion.interop.diffusers`` does.
"""

// The torch layer a plan entry becomes: the same rule as sn_core.finalize.concrete_norm
// (variance "population", the plans the service writes).

/** e.g. "BatchNorm2d(64)", "GroupNorm(1, 64)", "SelectedNorm(64, mean=bn, var=in)". */
export function torchLayer(entry) {
  const { mean, var: variance, num_features: c, groups, dims } = entry;
  if (mean === variance) {
    if (mean === "bn" && [1, 2, 3].includes(dims)) return `BatchNorm${dims}d(${c})`;
    if (mean === "in" && [2, 3].includes(dims)) return `InstanceNorm${dims}d(${c}, affine=True)`;
    if (mean === "ln") return `GroupNorm(1, ${c})`;
    if (mean === "gn") return `GroupNorm(${groups}, ${c})`;
  }
  return `SelectedNorm(${c}, mean=${mean}, var=${variance})`;
}

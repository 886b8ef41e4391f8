-- Argo CD health check for mlops.dev/v1alpha1 InferenceDeployment (mlops-operator).
-- Argo CD sets the global `obj` (the live object) and reads the table this chunk returns:
-- { status = Healthy | Progressing | Degraded | Suspended | Missing, message = ... }.
-- Installed as argocd-cm key resource.customizations.health.mlops.dev_InferenceDeployment (see README.md here).

-- What each phase means to Argo CD (InferenceDeploymentStatus.phase). Pending: waiting for its
-- ModelVersion; Degraded: a canary aborted by its analysis (the stable version still serves).
local PHASES = {
  Pending = "Progressing",
  Progressing = "Progressing", -- a rollout step is under way
  Paused = "Suspended", -- a canary paused by a pause step or by hand, as Argo Rollouts reports it
  Available = "Healthy",
  Degraded = "Degraded",
  Failed = "Degraded", -- cannot serve the version at all (EngineGPUMismatch, an invalid model)
}
-- Ready reasons that decide the health whatever the phase.
local REASONS = {
  -- The ModelVersion it serves does not exist (the reason TrainingRun uses for its Dataset).
  ModelVersionNotFound = "Missing",
  -- spec.modelVersionFrom names a ModelPipeline that does not exist.
  ModelPipelineNotFound = "Missing",
  -- The ModelPipeline it follows has promoted no version yet: a wait, not a fault.
  NoPromotedVersion = "Progressing",
}

-- ---- common to the four kinds' checks from here on (identical in each file; a unit test compares) --
-- Ready reasons that mean "the operator cannot make progress until a person acts": an invalid spec,
-- a controller this operator version does not have, and the engine's own error reasons (a child the
-- apiserver refused, a 403, an API error, an exception, a status that would be invalid).
local STUCK = {
  InvalidSpec = true,
  NotImplemented = true,
  ChildRejected = true,
  Forbidden = true,
  ApiError = true,
  ReconcileError = true,
  InvalidStatus = true,
}

local function health(status, message)
  return { status = status, message = message }
end

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c == nil or c.reason == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local function assess(o)
  local kind = o.kind or "object"
  local status = o.status
  if status == nil or status.phase == nil then
    return health("Progressing", "waiting for the operator to reconcile this " .. kind)
  end
  local generation = nil
  if o.metadata ~= nil then
    generation = o.metadata.generation
  end
  local observed = status.observedGeneration
  if generation ~= nil and (observed == nil or observed < generation) then
    return health("Progressing", "waiting for the operator to observe generation " .. tostring(generation)
      .. " (status is for generation " .. tostring(observed or "none") .. ")")
  end
  local ready = condition(status.conditions, "Ready")
  local message = explain(ready, "phase " .. status.phase)
  local reason = status.phase
  if ready ~= nil and ready.reason ~= nil then
    reason = ready.reason
  end
  if STUCK[reason] then
    return health("Degraded", message)
  end
  -- A spec change the operator will not act on (a TrainingRun is immutable once started): what Git
  -- says is not what runs.
  local accepted = condition(status.conditions, "SpecAccepted")
  if accepted ~= nil and accepted.status == "False" then
    return health("Degraded", explain(accepted, "the spec was not accepted"))
  end
  local verdict = REASONS[reason] or PHASES[status.phase]
  if verdict == nil then
    return health("Progressing", "phase " .. status.phase .. " is unknown to this health check; " .. message)
  end
  if verdict == "Healthy" and (ready == nil or ready.status ~= "True") then
    return health("Progressing", "phase " .. status.phase .. " but Ready is not True; " .. message)
  end
  return health(verdict, message)
end

return assess(obj)

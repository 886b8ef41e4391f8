{{/*
The operator's alerting rules, as Prometheus rule groups. prometheusrule.yaml wraps them in a
PrometheusRule; the tests render this same text and run `promtool check rules` and
`promtool test rules` on it (tests/chart/alerts_test.yaml).

mlops_objects{kind,phase} is exported by every replica that works; a standby replica exports
nothing, so `max by` keeps one series per kind/phase however many replicas are scraped.
*/}}
{{- define "mlops-operator.alertJob" -}}
{{- default (printf "%s-metrics" (include "mlops-operator.fullname" .)) .Values.metrics.prometheusRule.job }}
{{- end }}

{{- define "mlops-operator.alertGroups" -}}
{{- $job := include "mlops-operator.alertJob" . }}
{{- $r := .Values.metrics.prometheusRule }}
{{- $extra := $r.alertLabels | default dict -}}
- name: mlops-operator.rules
  rules:
    - alert: MlopsOperatorDown
      expr: absent(up{job="{{ $job }}"} == 1)
      for: {{ $r.downMinutes }}m
      labels:
        severity: critical
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: No mlops-operator replica is up.
        description: >-
          No metrics target of job {{ $job }} has been up for {{ $r.downMinutes }} minutes: nothing
          reconciles Datasets, TrainingRuns, ModelVersions or InferenceDeployments.
    - alert: MlopsOperatorReplicaDown
      expr: up{job="{{ $job }}"} == 0
      for: 15m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: An mlops-operator replica is down.
        description: >-
          The replica {{ "{{ $labels.instance }}" }} has not answered scrapes for 15 minutes; the
          operator runs without a standby to take over.
    - alert: MlopsTrainingRunsStuck
      expr: max by (kind, phase) (mlops_objects{job="{{ $job }}", kind="TrainingRun", phase=~"Pending|Starting"}) > 0
      for: {{ $r.stuckMinutes }}m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: TrainingRuns stuck in {{ "{{ $labels.phase }}" }}.
        description: >-
          {{ "{{ $value }}" }} TrainingRun(s) have been {{ "{{ $labels.phase }}" }} for at least
          {{ $r.stuckMinutes }} minutes (no GPU capacity, an unschedulable pod, an image that does not
          pull). See `kubectl get tr -A` and the runs' conditions and events.
    - alert: MlopsInferenceDeploymentsDegraded
      expr: max by (kind, phase) (mlops_objects{job="{{ $job }}", kind="InferenceDeployment", phase="Degraded"}) > 0
      for: 5m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Canaries were aborted.
        description: >-
          {{ "{{ $value }}" }} InferenceDeployment(s) have been Degraded for 5 minutes: a canary's
          analysis failed, the Rollout aborted it and the stable version serves all traffic. The
          Ready condition names the failed metric and its value (`kubectl get idep -A`); point
          modelVersionRef at a fixed version to start a new canary.
    - alert: MlopsDriftDetected
      expr: max by (namespace, name) (mlops_drift_drifted{job="{{ $job }}"}) == 1
      for: {{ $r.driftMinutes }}m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: 'DriftMonitor {{ "{{ $labels.namespace }}/{{ $labels.name }}" }} reports drift.'
        description: >-
          The DriftMonitor {{ "{{ $labels.namespace }}/{{ $labels.name }}" }} has been Drifted for
          {{ $r.driftMinutes }} minutes: the newly landed data no longer looks like the served model's
          training data. Its status names the drifted columns and the Evidently report
          (`kubectl get dm -n {{ "{{ $labels.namespace }}" }} {{ "{{ $labels.name }}" }} -o yaml`).
    - alert: MlopsTrainingFailureRateHigh
      expr: |-
        sum(increase(mlops_training_duration_seconds_count{job="{{ $job }}", result="Failed"}[1h]))
          /
        sum(increase(mlops_training_duration_seconds_count{job="{{ $job }}"}[1h]))
          > {{ $r.failureRateThreshold }}
      for: 15m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: Many TrainingRuns fail.
        description: >-
          {{ "{{ $value | humanizePercentage }}" }} of the TrainingRuns that ended in the last hour
          failed (threshold {{ $r.failureRateThreshold }}). See `kubectl get tr -A` and the Failed
          condition's reason.
    - alert: MlopsReconcileErrorsHigh
      expr: |-
        sum by (kind) (rate(mlops_reconcile_total{job="{{ $job }}", result="error"}[10m]))
          /
        sum by (kind) (rate(mlops_reconcile_total{job="{{ $job }}"}[10m]))
          > {{ $r.reconcileErrorRatioThreshold }}
      for: 10m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: '{{ "{{ $labels.kind }}" }} reconciles fail.'
        description: >-
          {{ "{{ $value | humanizePercentage }}" }} of {{ "{{ $labels.kind }}" }} reconciles ended in
          an error over the last 10 minutes. The objects' Ready conditions and the operator log say why.
    - alert: MlopsReconcileUnexpectedErrors
      expr: sum by (kind, reason) (increase(mlops_reconcile_errors_total{job="{{ $job }}"}[10m])) > 0
      for: 10m
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: '{{ "{{ $labels.kind }}" }} reconciles raise {{ "{{ $labels.reason }}" }}.'
        description: >-
          The operator hit unexpected {{ "{{ $labels.reason }}" }} errors while reconciling
          {{ "{{ $labels.kind }}" }} objects for 10 minutes: a bug or an unreachable dependency.
          The operator log has the traceback.
{{- end }}

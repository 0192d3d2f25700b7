-- The inference service: one row per provider call, per-tenant budgets, and media made by a
-- model (an enhanced photo, a generated image) linked to what it was made from.
CREATE SCHEMA IF NOT EXISTS inference;

CREATE TABLE inference.ai_metrics (
    id         bigserial PRIMARY KEY,
    at         timestamptz      NOT NULL DEFAULT now(),
    tenant     text             NOT NULL,
    job_id     uuid,
    provider   text             NOT NULL,
    model      text             NOT NULL,
    -- the task: transcribe, describe_image, enhance_image, generate_text, generate_image,
    -- extract, moderate
    operation  text             NOT NULL,
    latency_ms integer          NOT NULL,
    tokens_in  bigint           NOT NULL,
    tokens_out bigint           NOT NULL,
    cost_usd   double precision NOT NULL,
    -- OK or the stable error code
    outcome    text             NOT NULL
);

CREATE INDEX ai_metrics_tenant_at ON inference.ai_metrics (tenant, at);

-- Overrides of the default budgets (MM_AI_DAILY_BUDGET_USD, MM_AI_MONTHLY_BUDGET_USD); NULL
-- keeps the default for that period.
CREATE TABLE inference.budgets (
    tenant      text PRIMARY KEY,
    daily_usd   double precision,
    monthly_usd double precision,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE ingest.media
    ADD COLUMN parent_id uuid REFERENCES ingest.media (id) ON DELETE SET NULL,
    -- how a model made this media: task, model, provider, prompt, cost, processing time
    ADD COLUMN origin jsonb;

-- Exact dedup of synthetic prompt candidates on normalised text (case, white space and
-- punctuation folded: prompt_id is a hash of that normal form), against each other and
-- against every prompt already in the run, all rounds.
-- Views: candidates (candidate_id, prompt_id, prompt, shots, status),
--        used_prompts (prompt_id) — every prompt of earlier rounds, seeds included.
-- Result: one row per candidate that parsed, with its dedup verdict.
WITH ok AS (
    SELECT *, row_number() OVER (PARTITION BY prompt_id ORDER BY candidate_id) AS copy_rank
    FROM candidates
    WHERE status = 'ok'
)
SELECT
    candidate_id, prompt_id, prompt, shots,
    CASE
        WHEN prompt_id IN (SELECT prompt_id FROM used_prompts) THEN 'used_before'
        WHEN copy_rank > 1 THEN 'duplicate'
        ELSE 'unique'
    END AS dedup
FROM ok
ORDER BY candidate_id

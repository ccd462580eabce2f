-- Judge quality on held-out annotations (views judge_eval_rows: prompt_id, human_score,
-- score, score_int; and judge_eval_pairs, from sql/judge_eval_pairs.sql).
-- Pairwise accuracy: over pairs of responses to the same prompt whose human scores
-- differ, the share the judge orders the same way; a tie in the judge's scores counts
-- as wrong, which is why integer scores lose to real-valued ones.
-- Rank correlation: Spearman's rho, Pearson's r of the average ranks.
WITH pairs AS (SELECT * FROM judge_eval_pairs),  -- sql/judge_eval_pairs.sql
ranked AS (
    SELECT
        rank() OVER (ORDER BY human_score) + (count(*) OVER (PARTITION BY human_score) - 1) / 2.0 AS r_human,
        rank() OVER (ORDER BY score)       + (count(*) OVER (PARTITION BY score) - 1) / 2.0       AS r_real,
        rank() OVER (ORDER BY score_int)   + (count(*) OVER (PARTITION BY score_int) - 1) / 2.0   AS r_int,
        human_score, score
    FROM judge_eval_rows
)
SELECT 'pairwise_accuracy_real' AS metric, avg((real_valued = human)::INT)::DOUBLE AS value, count(*) AS n FROM pairs
UNION ALL
SELECT 'pairwise_accuracy_int', avg((integer = human)::INT)::DOUBLE, count(*) FROM pairs
UNION ALL
SELECT 'spearman_real', corr(r_real, r_human), count(*) FROM ranked
UNION ALL
SELECT 'spearman_int', corr(r_int, r_human), count(*) FROM ranked
UNION ALL
SELECT 'mean_abs_error_real', avg(abs(score - human_score)), count(*) FROM ranked
ORDER BY metric

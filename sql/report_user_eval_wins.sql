-- The report's user_eval_wins figure: Paired win rate (ties half) of the newest checkpoint
-- against the others, and the same at equal answer length (intercept of the win indicator
-- regressed on the length difference); length_share is the part of the score difference that
-- length explains.
select eval_set,
  checkpoint || ' vs ' || versus as comparison,
  max(value) filter (where metric = 'win_rate') as win_rate,
  max(value) filter (where metric = 'win_rate_at_equal_length') as win_rate_equal_length,
  max(value) filter (where metric = 'score_difference') as score_difference,
  max(value) filter (where metric = 'difference_at_equal_length') as difference_equal_length,
  max(value) filter (where metric = 'length_share') as length_share,
  max(low) filter (where metric = 'win_rate') as win_rate_low,
  max(high) filter (where metric = 'win_rate') as win_rate_high,
  max(low) filter (where metric = 'win_rate_at_equal_length') as equal_length_low,
  max(high) filter (where metric = 'win_rate_at_equal_length') as equal_length_high,
  max(n) filter (where metric = 'win_rate') as prompts
from user_eval_summary
where versus is not null
group by all
order by all

"""Results and leaderboard: ``results`` (the results API over the store or MLflow), ``model`` (the
leaderboard as typed data) and ``render`` (renderers keyed by ReportFormat)."""

"""Analysis of run tables (pandas, matplotlib, seaborn; never torch):
labels, the 8x check, figures, report."""

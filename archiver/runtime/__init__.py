"""What every task run goes through: locks, the run record, metrics and notifications."""

"""Model assembly from config."""

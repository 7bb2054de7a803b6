"""copilot"""

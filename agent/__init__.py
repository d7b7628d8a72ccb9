"""paystation-agent"""
